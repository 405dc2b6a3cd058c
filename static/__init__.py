"""The page's static assets (scripts, styles, example images), installed as package data of ranlens."""
