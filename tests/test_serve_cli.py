"""`nanoseek serve` as a user runs it: a separate process on 127.0.0.1, an API key, Ctrl-C to stop; and its
refusals (a missing checkpoint) as one line and exit code 2."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import nanoseek
from nanoseek.cli import main
from nanoseek.config import preset
from nanoseek.tokenizer import Tokenizer
from serve_helpers import random_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, headers=None, data=None):
    req = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nanoseek serve: error: --checkpoint") and "config.json" in err


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "http"])
def test_serve_refuses_a_port_out_of_range_at_once(tmp_path, capsys, port):
    """Issue 22.8: --port 99999 loaded the model, then raised OverflowError."""
    with pytest.raises(SystemExit) as e:
        main(["serve", "--checkpoint", str(tmp_path / "nothing"), "--port", port])
    assert e.value.code == 2 and "--port: must be a port number from 0 to 65535" in capsys.readouterr().err


def test_serve_says_a_busy_port_or_a_foreign_host_before_loading_the_model(capsys):
    ckpt = str(random_checkpoint())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--checkpoint", ckpt, "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert f"cannot listen on 127.0.0.1:{port}" in err and "choose another port" in err, err
        assert "nanoseek serve: model" not in err  # said before the model loads (then a line names it)
    assert main(["serve", "--checkpoint", ckpt, "--host", "192.0.2.1", "--port", str(port)]) == 2  # TEST-NET-1
    err = capsys.readouterr().err
    assert "--host: 192.0.2.1 is not an address of this machine" in err and "serve: model" not in err, err


def _serve_once(ckpt, env: dict) -> str:
    """Start `nanoseek serve` as a user does (default flags: compiled decoding), answer one chat request with
    the API key, stop it with Ctrl-C; returns its stderr."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nanoseek.cli", "serve", "--checkpoint", str(ckpt), "--port",
                             str(port), "--threads", "1", "--log-level", "warning", "--max-batch", "1"],
                            env=env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try:
                if _get(base + "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() - t0 < 300, "the server did not start"
            time.sleep(0.1)
        assert _get(base + "/v1/models")[0] == 401
        status, body = _get(base + "/v1/models", {"Authorization": "Bearer sk-local"})
        assert status == 200 and body["data"][0]["id"] == "tiny"  # the checkpoint directory's name
        status, body = _get(base + "/v1/chat/completions", {"Authorization": "Bearer sk-local",
                                                           "Content-Type": "application/json"},
                            json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).encode())
        assert status == 200 and body["usage"]["completion_tokens"] >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    err = proc.stderr.read()
    assert rc == 130, err  # shut down cleanly, then exit as an interrupted command does
    assert f"http://127.0.0.1:{port}/" in err and "model 'tiny'" in err
    return err


@pytest.mark.slow  # two starts that compile (one layer, batch 1 only): ~1 minute
def test_serve_runs_as_a_process_compiles_once_and_stops_on_ctrl_c(tmp_path):
    """The first start compiles the decode steps into nanoseek's compile folder; the second compiles from it."""
    tok = Tokenizer.load(random_checkpoint())
    ckpt = tmp_path / "tiny"
    nanoseek.save_model(nanoseek.DeepSeekV3(preset("tiny", vocab_size=tok.vocab_size, num_hidden_layers=1,
                                                   first_k_dense_replace=0, num_nextn_predict_layers=0)), ckpt)
    tok.save(ckpt)
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env.update(OMP_NUM_THREADS="1", NANOSEEK_API_KEY="sk-local", NANOSEEK_CACHE_DIR=str(tmp_path / "cache"))
    first = _serve_once(ckpt, env)
    assert "compiling the decode steps (a first start" in first and ", compiled in" in first
    assert list((tmp_path / "cache" / "compile" / "nanoseek-warm").glob("*.json"))
    assert any((tmp_path / "cache" / "compile").glob("fxgraph/**/*"))  # inductor's graphs, on disk
    second = _serve_once(ckpt, env)
    assert "compiling the decode steps from the compile cache" in second, second
