"""The library application: its web layer (:mod:`library.web`), the domain rules, the schemas and
the command-line commands. ``library_api.py`` beside this package builds the app from them."""
