"""``sample`` and ``info``: make and inspect arch configs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import click

from qfa_deploy.atomic import check_output
from qfa_deploy.commands.options import SEED
from qfa_deploy.errors import QfaError

__all__ = ["COMMANDS"]


@click.command()
@click.option("--space", required=True, help="Search space name (see `qfa-deploy info --space NAME`).")
@click.option("--seed", type=SEED, default=None, help="Random subnet from this seed.")
@click.option("--min", "smallest", is_flag=True, help="The smallest subnet (lowest bits).")
@click.option("--max", "largest", is_flag=True, help="The largest subnet (highest bits).")
@click.option("--bits", type=int, default=None, help="With --min/--max: uniform bitwidth for every conv.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write cfg.json here (default: stdout).")
@click.option("--force", is_flag=True, help="Replace -o if it exists.")
def sample(space, seed, smallest, largest, bits, output, force):
    """Write an arch config (cfg.json) of SPACE."""
    from qfa_deploy.arch import ArchConfig, sample_arch
    from qfa_deploy.space import create_space

    sp = create_space(space)
    if sum([seed is not None, smallest, largest]) > 1:
        raise QfaError("give at most one of --seed, --min, --max")
    if bits is not None and bits not in sp.bit_choices:
        raise QfaError(f"--bits = {bits} is not one of {list(sp.bit_choices)}")
    if bits is not None and not (smallest or largest):
        raise QfaError("--bits goes with --min or --max")
    if output:
        check_output(output, force)
    if smallest:
        cfg = ArchConfig.smallest(space, bits)
    elif largest:
        cfg = ArchConfig.largest(space, bits)
    else:
        cfg = sample_arch(space, random.Random(seed))
    if output:
        from qfa_deploy.commands.common import write_text_atomic  # imports torch: after validation

        write_text_atomic(output, cfg.to_json())
    else:
        click.echo(cfg.to_json(), nl=False)


@click.command()
@click.argument("arch", required=False, type=click.Path())
@click.option("--space", default=None, help="Describe a search space instead of a config.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(arch, space, as_json):
    """Cost of an ARCH config (MACs, BitOPs, parameters, size), or the choices of a --space.

    ARCH may also be an export artifact folder: then its subnet's cost, the bits of its convs and the
    constant bytes of its compiled library (the read-only data sections that hold the weights).
    """
    from qfa_deploy.arch import ArchConfig, load_arch
    from qfa_deploy.space import create_space

    if (arch is None) == (space is None):
        raise QfaError("give an arch config or --space NAME (one of them)")
    if space is not None:
        desc = create_space(space).describe()
        if as_json:
            click.echo(json.dumps(desc, indent=2))
            return
        click.echo(f"space {desc['name']}: {desc['num_classes']} classes")
        res = desc["resolutions"]
        click.echo(f"  resolution   {res[0]}..{res[-1]} ({len(res)} values)")
        stem = desc["stem"]
        click.echo(f"  stem         {stem['width']} ch, stride {stem['stride']}, {stem['bits']}-bit")
        for i, s in enumerate(desc["stages"]):
            se = "yes" if s["se"] else "no"
            click.echo(f"  stage {i}      {s['width']} ch, stride {s['stride']}, {s['act']}, SE={se}")
        click.echo(f"  head         final expand {desc['final_expand_width']}, feature mix {desc['feature_mix_width']}")
        click.echo(f"  kernel       {desc['kernel_choices']}   expand {desc['expand_choices']}"
                   f"   depth {desc['depth_choices']}")
        click.echo(f"  bits         {desc['bit_choices']} per conv, weights and activations")
        click.echo(f"  subnets      {desc['num_subnets']:.3e} (10^{desc['log10_num_subnets']})")
        return
    artifact = None
    if arch and _is_dir(arch):
        artifact = _artifact_summary(Path(arch))
        cfg = ArchConfig.from_dict(artifact.pop("arch"))
    else:
        cfg = load_arch(arch)  # before importing torch: a bad config fails fast

    from qfa_deploy.commands.common import emit_json
    from qfa_deploy.metrics import subnet_cost

    cost = subnet_cost(cfg).to_dict()
    if as_json:
        emit_json({"arch": cfg.to_dict(), "digest": cfg.digest(), **cost,
                   **({"artifact": artifact} if artifact else {})})
        return
    click.echo(f"{cfg.space}  {cfg.short()}")
    click.echo(f"  MACs        {cost['mflops']:.2f} M")
    click.echo(f"  BitOPs      {cost['gbitops']:.4f} G")
    click.echo(f"  parameters  {cost['params']:,}")
    click.echo(f"  size        {cost['size_kib']:.1f} KiB")
    if artifact:
        _echo_artifact(artifact)


def _is_dir(path: str) -> bool:
    """``path`` names a folder (an over-long or looping name is not one: load_arch says what is wrong)."""
    try:
        return Path(path).is_dir()
    except OSError:
        return False


def _artifact_summary(folder: Path) -> dict:
    """What ``info`` shows of an export artifact: its arch, target, bit histograms and, for a compiled
    target, the library's constant bytes and sections (as meta.json records them; measured from the
    library for artifacts written before meta.json recorded them)."""
    from qfa_deploy.export.artifact import META_NAME, read_artifact

    if not (folder / META_NAME).exists():
        raise QfaError(f"{folder} is a directory without {META_NAME}, not an arch config or an export artifact")
    meta = read_artifact(folder)  # every file checked against its sha256
    summary = {"arch": meta["arch"], "folder": str(folder), "target": meta["target"], "bits": meta.get("bits")}
    compiled = meta.get("compile")
    if isinstance(compiled, dict) and isinstance(compiled.get("library"), str):
        sections, source = compiled.get("constant_sections"), "meta.json"
        if not isinstance(sections, dict) or not all(isinstance(v, int) for v in sections.values()):
            from qfa_deploy.deploy.elf import constant_sections

            sections, source = constant_sections(folder / compiled["library"]), "measured"
        summary.update(library=compiled["library"], constant_bytes=sum(sections.values()),
                       constant_sections=sections, constant_bytes_source=source,
                       debug_symbols=compiled.get("debug_symbols"))
    return summary


def _echo_artifact(artifact: dict) -> None:
    """The artifact lines of ``info``: bits, then the library's constant bytes beside them."""
    bits = artifact.get("bits") or {}

    def hist(key: str) -> str:
        return ", ".join(f"{b}-bit x{n}" for b, n in (bits.get(key) or {}).items()) or "-"

    click.echo(f"  artifact    {artifact['folder']} (target {artifact['target']})")
    click.echo(f"  bits        weights {hist('w_bits')}; activations {hist('a_bits')}")
    if "constant_bytes" not in artifact:
        click.echo("  constants   - (no compiled library)")
        return
    where = ", ".join(f"{name} {size:,}" for name, size in artifact["constant_sections"].items()) or "none"
    note = "" if artifact["constant_bytes_source"] == "meta.json" else ", measured: not in meta.json"
    click.echo(f"  constants   {artifact['constant_bytes']:,} B in {artifact['library']} ({where}{note})")


COMMANDS = [sample, info]
