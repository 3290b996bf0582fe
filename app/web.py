"""The page people see at `/`: what this registry is and how to pull from it."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template_string, request

from builders.image import SHELL_PACKAGES

bp = Blueprint("web", __name__)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Nix image registry</title>
<style>body{font-family:sans-serif;max-width:46em;margin:2em auto;padding:0 1em;line-height:1.5}
code,pre{background:#f3f3f3;padding:.1em .3em}</style></head>
<body>
<h1>Container images built from Nix packages</h1>
<p>Name the packages you want in the image path; the image is built by Nix
the first time and served from cache after.</p>
<pre>docker pull {{ host }}/shell/git/htop</pre>
<p>Each path component is a package attribute; dots reach nested sets
(<code>{{ host }}/python3packages.flask</code>). Order does not matter.</p>
<h2>Meta-packages</h2>
<ul>
<li><code>shell</code> (first component): adds {{ shell|join(", ") }}</li>
<li><code>arm64</code> (first component): builds for aarch64-linux</li>
</ul>
<h2>Package source</h2>
<p>Images are built from {{ package_source }}.</p>
</body></html>
"""


@bp.route("/")
def index():
    return render_template_string(
        PAGE, host=request.host, shell=SHELL_PACKAGES,
        package_source=current_app.extensions["images"].source.describe())
