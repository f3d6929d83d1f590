"""Regenerate docs/img/domains.png: scenes 0-1 of the val split in every synthetic domain + labels.

    .venv/bin/python docs/make_domains_figure.py
"""

from pathlib import Path

from PIL import Image

from npdg import viz
from npdg.data.synthetic import DOMAINS, render_scene
from npdg.labels import colorize

tiles, titles = [], []
for index in (0, 1):
    for name in DOMAINS:
        image, _ = render_scene(name, "val", index, (128, 256))
        tiles.append(image)
        titles.append(f"{name} ({DOMAINS[name].role})")
    _, label = render_scene("source", "val", index, (128, 256))
    tiles.append(colorize(label))
    titles.append("labels (all but suburb)")
out = Path(__file__).parent / "img" / "domains.png"
out.parent.mkdir(parents=True, exist_ok=True)
Image.fromarray(viz.grid(tiles, ncols=len(DOMAINS) + 1, titles=titles)).save(out, optimize=True)
print(f"wrote {out}")
