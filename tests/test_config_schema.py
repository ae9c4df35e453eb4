"""config.json against its schema, through `nanoseek info --checkpoint DIR`: every field of a valid config mutated
to a wrong type and to a wrong value exits 2 with one message naming the field (issue 8.10)."""

from __future__ import annotations

import copy
import json

import pytest

from nanoseek.cli import main as cli
from nanoseek.config import preset
from nanoseek.schema import CONFIG_ALIAS_FIELDS, CONFIG_FIELDS, ROPE_SCALING_FIELDS

from cli_helpers import cli_error


def _wrong_values(f):
    """A wrong type for every field, and values out of range for numbers and strings with choices."""
    yield {"bad": 1} if f.kind != "object" else [1, 2]
    yield "x" if f.kind != "str" else 7
    if f.kind in ("int", "number"):
        if f.min is not None or f.above is not None:
            yield -1
        if f.max is not None:
            yield f.max + 1
        yield float("nan")
        if f.kind == "int":
            yield 2.5
    if f.choices:
        yield "bogus"
    if not f.nullable:
        yield None


@pytest.fixture
def good():
    d = preset("tiny").to_hf_dict()
    d["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                         "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
    return d


def _info(capsys, tmp_path, d) -> tuple[int, str]:
    (tmp_path / "config.json").write_text(json.dumps(d))  # json writes nan as NaN, which json.loads reads back
    capsys.readouterr()
    rc = cli(["info", "--checkpoint", str(tmp_path)])
    return rc, capsys.readouterr().err


def test_every_config_field_is_checked(good, tmp_path, capsys):
    assert _info(capsys, tmp_path, good)[0] == 0
    # (n_group / topk_group null in a hub config means no groups: 1)
    cases = [([k], k, v) for k, f in CONFIG_FIELDS.items() for v in _wrong_values(f)
             if not (v is None and CONFIG_ALIAS_FIELDS.get(k, f).nullable)]
    cases += [(["rope_scaling", k], f"rope_scaling.{k}", v) for k, f in ROPE_SCALING_FIELDS.items() if k != "type"
              for v in _wrong_values(f) if v is not None]
    cases += [([k], k, v) for k, f in CONFIG_ALIAS_FIELDS.items() if k not in CONFIG_FIELDS for v in _wrong_values(f)]
    cases += [([k], k, KeyError) for k in CONFIG_FIELDS]
    assert len(cases) > 150
    for path, name, value in cases:
        d = copy.deepcopy(good)
        target = d
        for k in path[:-1]:
            target = target[k]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        rc, err = _info(capsys, tmp_path, d)
        if value is KeyError:  # a missing field takes the dataclass default: valid, or refused naming it
            assert rc == 0 or name in err, (name, err)
            continue
        assert rc == 2, (name, value, err)
        assert err.startswith("nanoseek info: error: ") and "config.json" in err, (name, value, err)
        assert f"'{name}'" in err or (name == "model_type" and "model_type" in err), (name, value, err)


@pytest.mark.parametrize("change,field", [
    ({"rope_theta": "x"}, "rope_theta"),
    ({"rms_norm_eps": "abc"}, "rms_norm_eps"),
    ({"rope_scaling": "yarn"}, "rope_scaling"),
    ({"n_routed_experts": None}, "n_routed_experts"),
    ({"eos_token_id": 300}, "eos_token_id"),  # past the vocabulary
    ({"rope_parameters": "yarn"}, "rope_parameters"),
])
def test_the_reported_bad_configs(good, tmp_path, capsys, change, field):
    rc, err = _info(capsys, tmp_path, {**good, **change})
    assert rc == 2 and err.startswith("nanoseek info: error: ") and f"field '{field}'" in err, err


def test_a_config_that_is_not_an_object(tmp_path, capsys):
    for text in ("[1, 2]", "null", '"x"'):
        (tmp_path / "config.json").write_text(text)
        cli_error(capsys, ["info", "--checkpoint", str(tmp_path)], "config.json must be a JSON object")
