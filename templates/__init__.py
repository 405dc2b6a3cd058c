"""The page's Jinja2 templates, installed as package data of ranlens."""
