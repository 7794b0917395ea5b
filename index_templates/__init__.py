"""The index templates (JSON), shipped as the package data `multi_modal_rag.index_templates`.

`multi_modal_rag/index_templates` is a symlink to this folder; this file makes it a regular package, so that
`importlib.resources.files("multi_modal_rag.index_templates")` finds it in every kind of install.
"""
