"""A Sphinx extension for the book's strict (-W) build: Jupyter Book always passes
``comments_config``, a value that only sphinx-comments registers, and sphinx-comments is
left out because the site makes no request outside itself. Registering the value (with
no behaviour) keeps the build free of the 'unknown config value' warning."""


def setup(app):
    app.add_config_value("comments_config", {}, "html")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
