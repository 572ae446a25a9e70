"""``pulse studio``: every technique in a local web page, with live preview.

A standard-library HTTP server on 127.0.0.1 (``server``) serves one page of
plain HTML and JavaScript (``page.html``) and a small JSON API. Renders run in
one worker thread (``jobs``) through the same functions ``pulse generate
--recipe`` calls (``render``), on the recipe TOML the page exports
(``recipe_text``), so a recipe and seed give the same image in both.
"""
