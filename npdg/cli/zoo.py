"""``python -m npdg zoo``: the demo model zoo in ``assets/zoo/`` — build, list, verify.

Examples::

    python -m npdg zoo list
    python -m npdg zoo build                 # every model not shipped yet, resumable model by model
    python -m npdg zoo build r18-erm r18-dsp --device cuda
    python -m npdg zoo verify --eval 20      # files, SHA-256, plan replay, mIoU against the cards
    python -m npdg zoo sensitivity           # recompute the shipped tables (after a table format change)
    python -m npdg zoo curves                # ship the Prune page's curves of the sparse-trained models
    python -m npdg zoo whatif                # ship the Prune page's default what-ifs of every model

How each model is made is the table in ``npdg/recipes/zoo.py``; ``assets/README.md`` shows the cards.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from npdg.cli.common import add_command, add_device_option
from npdg.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "zoo", "the demo model zoo: build, list, verify", __doc__)
    sub = p.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="train and ship zoo models (resumable)")
    b.add_argument("names", nargs="*", help="models to build (default: all not shipped yet)")
    b.add_argument("--work", type=Path, default=None, help="folder of the training runs (default runs/zoo)")
    b.add_argument("--force", action="store_true", help="rebuild shipped models too")
    add_device_option(b)
    b.set_defaults(func=_build)
    ls = sub.add_parser("list", help="one line per zoo model")
    ls.add_argument("--json", action="store_true", help="print JSON records")
    ls.set_defaults(func=_list)
    v = sub.add_parser("verify", help="check the shipped files against their cards")
    v.add_argument("names", nargs="*", help="models to check (default: all shipped)")
    v.add_argument("--eval", type=int, default=0, metavar="N", help="also re-measure mIoU on N scenes per domain (20 or 50)")
    v.add_argument("--tolerance", type=float, default=0.005, help="allowed absolute mIoU difference (default 0.005)")
    v.set_defaults(func=_verify)
    r = sub.add_parser("sensitivity", help="recompute the shipped dense models' sensitivity tables in place")
    r.add_argument("names", nargs="*", help="dense models (default: all shipped)")
    add_device_option(r)
    r.set_defaults(func=_sensitivity)
    c = sub.add_parser("curves", help="precompute the Prune page's mIoU-vs-rate curves of the sparse-trained models")
    c.add_argument("names", nargs="*", help="sparse-trained zoo models (default: all shipped)")
    c.set_defaults(func=_curves)
    w = sub.add_parser("whatif", help="precompute the Prune page's what-ifs at its default settings")
    w.add_argument("names", nargs="*", help="zoo models (default: all shipped)")
    w.set_defaults(func=_whatif)


def _build(args: argparse.Namespace) -> int:
    from npdg.recipes.zoo import WORK_DIR, build

    args.resume_hint = "python -m npdg zoo build (it continues where it stopped)"
    done = build(args.names or None, work=args.work or WORK_DIR, device=args.device, force=args.force)
    print(f"built {len(done)} model(s): {', '.join(p.name for p in done) or 'none (all shipped)'}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from npdg.recipes.zoo import zoo_table

    t = zoo_table()
    if args.json:
        print(json.dumps(json.loads(t.to_json(orient="records")), indent=2))
        return 0
    cols = [c for c in ("name", "kind", "parent", "shipped", "source", "heldout", "suburb", "gflops", "params_m", "mb")
            if c in t.columns]
    print(t[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    from npdg.recipes.zoo import refresh_sensitivity

    done = refresh_sensitivity(args.names or None, device=args.device)
    print(f"recomputed the tables of {len(done)} model(s): {', '.join(done) or 'none'}")
    return 0


def _curves(args: argparse.Namespace) -> int:
    """Ship each sparse-trained model's curves (its own criterion, l1norm, random) at the Prune
    page's default settings, computed by the dashboard's own service, so the page opens them at once."""
    import pandas as pd

    from npdg.errors import DataError
    from npdg.recipes.zoo import ZOO_DIR, cards, ship_files
    from npdg.runs import atomic_write, atomic_write_json
    from npdg.service import jobs, pruning

    shipped = cards()
    names = args.names or [n for n, c in shipped.items() if c.get("kind") == "sparse"]
    for name in names:
        card = shipped.get(name)
        if card is None or card.get("kind") != "sparse":
            raise DataError(f"{name!r} is not a shipped sparse-trained zoo model")
        folder = ZOO_DIR / name
        out, side = folder / pruning.SHIPPED_CURVES, (folder / pruning.SHIPPED_CURVES).with_suffix(".json")
        for old in (out, side):  # npdg's own files: recomputed from scratch
            old.unlink(missing_ok=True)
        criteria = [card["sparse_mode"], "l1norm", "random"]
        frames = []
        for crit in criteria:
            print(f"zoo curves: {name} — {crit}", flush=True)
            status = jobs.wait(pruning.curve_job(folder, crit, n_images=2).key)
            if status.state != "done":
                raise DataError(f"{name} {crit}: {status.error}")
            frames.append(pruning.job_frame(status))
        frame = pd.concat(frames, ignore_index=True)
        atomic_write(out, lambda fh, f=frame: f.to_csv(fh, index=False), binary=False)
        atomic_write_json({"settings": pruning.curve_settings(), "criteria": criteria,
                           "command": f"python -m npdg zoo curves {name}",
                           "what": "soft-masked mIoU per domain and the plan's cost at each rate (the Prune page)"}, side)
        ship_files(name, [out, side])
        print(f"zoo curves: wrote {out} ({len(frame)} rows)")
    return 0


def _whatif(args: argparse.Namespace) -> int:
    """Ship each model's what-ifs (every page criterion at every slider rate, default settings,
    computed by the dashboard's own service in fp32) so a rate on the Prune page is a lookup."""
    from npdg.errors import DataError
    from npdg.recipes.zoo import ZOO_DIR, cards, ship_files
    from npdg.runs import atomic_write_json
    from npdg.service import clear_caches, pruning

    shipped = cards()
    for name in args.names or list(shipped):
        if name not in shipped:
            raise DataError(f"{name!r} is not a shipped zoo model (see `python -m npdg zoo list`)")
        out = ZOO_DIR / name / pruning.SHIPPED_WHAT_IF
        out.unlink(missing_ok=True)  # npdg's own file: recomputed from scratch, never read while building
        clear_caches()
        print(f"zoo whatif: {name}", flush=True)
        table = pruning.build_what_if_table(ZOO_DIR / name)
        table.update(command=f"python -m npdg zoo whatif {name}",
                     what="dense and soft-masked mIoU per domain (fp32) of the Prune page's default plans, by plan digest")
        atomic_write_json(table, out)
        ship_files(name, [out])
        print(f"zoo whatif: wrote {out} ({len(table['plans'])} plans)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from npdg.recipes.zoo import verify

    if args.eval < 0 or not math.isfinite(args.tolerance) or args.tolerance < 0:
        raise ConfigError(f"--eval and --tolerance must be >= 0, got {args.eval}, {args.tolerance}")
    problems = verify(args.names or None, eval_scenes=args.eval, tolerance=args.tolerance)
    for p in problems:
        print(f"problem: {p}")
    print("zoo verify: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 0 if not problems else 1
