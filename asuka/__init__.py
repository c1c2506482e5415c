"""ASUKA: aligned stable inpainting with unknown-areas prior."""
