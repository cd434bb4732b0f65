"""`serve` (OpenAI-compatible API via llamafactory-cli api) and `render-export` (merge the LoRA adapter)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli
from minicpm_recipes.errors import UserError
from minicpm_recipes.inference import export_params, infer_params, render_export
from minicpm_recipes.serve import check_bind, is_loopback, read_api_key, server_env

DEMO = REPO / "datasets" / "demo"
LORA_TRAIN = {"model_name_or_path": "openbmb/MiniCPM-SALA", "trust_remote_code": True, "flash_attn": "fa2",
              "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_rank": 16, "dataset": "d",
              "template": "cpm4", "output_dir": "saves/sala/lora/sft", "learning_rate": 1e-4, "deepspeed": "x.json"}


# ---- pure core -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.org"])
def test_listening_beyond_loopback_needs_a_key(host):
    with pytest.raises(UserError, match="API key"):
        check_bind(host, 8000, None)
    check_bind(host, 8000, "k3y")  # with a key: fine
    check_bind(host, 8000, None, allow_no_key=True)  # explicitly allowed


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_key(host):
    assert is_loopback(host)
    check_bind(host, 8000, None)


@pytest.mark.parametrize("port,key", [(0, None), (70000, None), (8000, ""), (8000, "a b")])
def test_bad_port_or_key_refused(port, key):
    with pytest.raises(UserError):
        check_bind("127.0.0.1", port, key)


def test_server_env_sets_llamafactory_variables_and_drops_a_stale_key():
    env = server_env({"PATH": "/bin", "API_KEY": "old"}, "127.0.0.1", 8123, None, "m")
    assert env["API_HOST"] == "127.0.0.1" and env["API_PORT"] == "8123" and env["API_MODEL_NAME"] == "m"
    assert "API_KEY" not in env and env["PATH"] == "/bin"
    assert server_env({}, "0.0.0.0", 1, "s3cret", None)["API_KEY"] == "s3cret"


def test_read_api_key_from_file_or_env(tmp_path):
    f = tmp_path / "key"
    f.write_text("abc\n")
    assert read_api_key(str(f), {"API_KEY": "env"}) == "abc"
    assert read_api_key(None, {"API_KEY": "env"}) == "env"
    assert read_api_key(None, {}) is None
    f.write_text("  \n")
    with pytest.raises(UserError):
        read_api_key(str(f), {})
    with pytest.raises(UserError):
        read_api_key(str(tmp_path / "missing"), {})


def test_infer_params_lora_loads_the_adapter_of_output_dir():
    p = infer_params(LORA_TRAIN)
    assert p["model_name_or_path"] == "openbmb/MiniCPM-SALA" and p["adapter_name_or_path"] == "saves/sala/lora/sft"
    assert p["template"] == "cpm4" and p["trust_remote_code"] is True and p["flash_attn"] == "fa2"
    assert p["finetuning_type"] == "lora"
    for key in ("stage", "do_train", "dataset", "learning_rate", "deepspeed", "lora_rank", "output_dir"):
        assert key not in p
    assert infer_params(LORA_TRAIN, adapter="ckpt/checkpoint-2")["adapter_name_or_path"] == "ckpt/checkpoint-2"
    stacked = infer_params(dict(LORA_TRAIN, adapter_name_or_path="first"))
    assert stacked["adapter_name_or_path"] == "first,saves/sala/lora/sft"


def test_infer_params_full_loads_output_dir_and_passes_inference_configs_through():
    full = dict(LORA_TRAIN, finetuning_type="full", output_dir="saves/full")
    p = infer_params(full)
    assert p["model_name_or_path"] == "saves/full" and "adapter_name_or_path" not in p
    with pytest.raises(UserError, match="whole model"):
        infer_params(full, adapter="x")
    ready = {"model_name_or_path": "m", "template": "qwen", "max_new_tokens": 64}
    assert infer_params(ready) == ready
    assert infer_params(ready, template="cpm4")["template"] == "cpm4"
    with pytest.raises(UserError):
        infer_params({"template": "cpm4"})


def test_export_params_and_rendered_files_round_trip():
    p = export_params(LORA_TRAIN, "merged")
    assert p["export_dir"] == "merged" and p["adapter_name_or_path"] == "saves/sala/lora/sft"
    assert "infer_backend" not in p
    with pytest.raises(UserError, match="quantized"):
        export_params(dict(LORA_TRAIN, quantization_bit=4), "merged")
    with pytest.raises(UserError):
        export_params(LORA_TRAIN, "")
    export, chat = render_export(LORA_TRAIN, "configs/sala_lora_sft.yaml", "out dir: #1", ref_dir="configs")
    assert export.name == "sala_lora_sft_export.yaml" and chat.name == "sala_lora_sft_merged_infer.yaml"
    assert yaml.safe_load(export.content) == export.params  # every value survives YAML, even odd paths
    assert yaml.safe_load(chat.content) == {"model_name_or_path": "out dir: #1", "template": "cpm4",
                                            "trust_remote_code": True, "flash_attn": "fa2",
                                            "infer_backend": "huggingface"}
    assert "llamafactory-cli export configs/sala_lora_sft_export.yaml" in export.content


def test_serve_out_writes_config_without_serving(tmp_path):
    config = tmp_path / "x_lora_sft.yaml"
    config.write_text(yaml.safe_dump(LORA_TRAIN))
    out = tmp_path / "api.yaml"
    proc = run_cli("serve", str(config), "-o", str(out), "--port", "8011")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(out.read_text()) == infer_params(LORA_TRAIN)
    assert "API_PORT=8011" in proc.stdout and "API_HOST=127.0.0.1" in proc.stdout


def test_serve_refuses_public_host_without_key_and_missing_adapter(tmp_path):
    config = tmp_path / "x_lora_sft.yaml"
    config.write_text(yaml.safe_dump(dict(LORA_TRAIN, output_dir=str(tmp_path / "not-trained"))))
    env = {k: v for k, v in os.environ.items() if k != "API_KEY"}
    proc = subprocess.run([sys.executable, "-m", "minicpm_recipes", "serve", str(config), "--host", "0.0.0.0"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "API key" in proc.stderr and proc.stderr.count("\n") == 1
    proc = run_cli("serve", str(config))
    assert proc.returncode == 2 and "not-trained" in proc.stderr and "train" in proc.stderr
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    for args, needle in ((["--adapter", "nope"], "nope: no such folder"),
                         (["--adapter", str(adapter), "--template", "nosuch"], "template nosuch: LLaMA-Factory"),
                         (["--adapter", str(adapter), "--backend", "sglang"], "the sglang package is not installed")):
        proc = run_cli("serve", str(config), *args)
        assert proc.returncode == 2 and needle in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr[-2000:]


def test_render_export_of_a_full_config_says_it_re_saves_and_checks_the_template(tmp_path):
    config = tmp_path / "x_full_sft.yaml"
    config.write_text(yaml.safe_dump(dict(LORA_TRAIN, finetuning_type="full", output_dir="saves/full")))
    proc = run_cli("render-export", str(config), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out" / "x_full_sft_export.yaml").read_text(encoding="utf-8")
    assert "re-save saves/full (finetuning_type full: no adapter to merge) as saves/full-merged" in text
    bad = run_cli("render-export", str(config), "--template", "nosuch", "-o", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "template nosuch" in bad.stderr and not (tmp_path / "bad").exists()


# ---- real training, server, export -----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """A LoRA adapter trained for 2 steps on the demo SFT data, by LLaMA-Factory itself."""
    work = tmp_path_factory.mktemp("serve")
    proc = run_cli("render", "sft", "--model", str(tiny_model), "--template", "cpm4", "--dataset-dir", str(DEMO),
                   "--output-dir", str(work / "adapter"), "--set", "bf16=false", "--set", "use_cpu=true",
                   "--set", "max_steps=2", "--set", "max_samples=8", "--set", "cutoff_len=256",
                   "--set", "preprocessing_num_workers=null", "--set", "dataloader_num_workers=0",
                   "--set", "val_size=null", "--set", "eval_strategy=null", "--set", "eval_steps=null",
                   "--set", "per_device_eval_batch_size=null", "-o", str(work / "configs"))
    assert proc.returncode == 0, proc.stderr
    config = work / "configs" / "tiny_lora_sft.yaml"
    lf = Path(sys.executable).parent / "llamafactory-cli"
    train = subprocess.run([str(lf), "train", str(config)], capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (work / "adapter" / "adapter_config.json").is_file()
    return config


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                found.add(addr)
    return found


def _interruptible() -> None:
    """In the child before exec: SIGINT handled by default, as in a terminal (a test run started in the background
    inherits SIGINT ignored, and serve keeps an ignored signal ignored, as nohup expects)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_serve_answers_openai_client_with_key(trained):
    import openai

    port = _free_port()
    key = "test-key-" + os.urandom(6).hex()
    env = dict(os.environ, API_KEY=key)
    proc = subprocess.Popen([sys.executable, "-m", "minicpm_recipes", "serve", str(trained), "--port", str(port),
                             "--model-name", "tiny-sft"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_interruptible)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=60)
        deadline = time.monotonic() + 240
        models = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[-3000:]
            try:
                models = client.models.list()
                break
            except openai.APIConnectionError:
                time.sleep(0.5)
        assert models is not None, "server not ready in time"
        assert [m.id for m in models.data] == ["tiny-sft"]
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only

        messages = [{"role": "user", "content": "你好"}]
        reply = client.chat.completions.create(model="tiny-sft", messages=messages, max_tokens=6, temperature=0)
        assert reply.choices[0].message.role == "assistant"
        assert reply.usage.completion_tokens >= 1 and reply.usage.prompt_tokens > 2
        chunks = list(client.chat.completions.create(model="tiny-sft", messages=messages, max_tokens=6,
                                                     temperature=0, stream=True))
        assert len(chunks) >= 2 and chunks[-1].choices[0].finish_reason in ("length", "stop")
        assert "".join(c.choices[0].delta.content or "" for c in chunks)

        for bad in ("wrong-key", None):
            other = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=bad or "unused", max_retries=0,
                                  default_headers={} if bad else {"Authorization": ""})
            with pytest.raises(openai.AuthenticationError):
                other.chat.completions.create(model="tiny-sft", messages=messages, max_tokens=2)
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as err:  # no Authorization header at all
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30)
        assert err.value.code == 401

        os.kill(proc.pid, signal.SIGINT)  # to `serve` alone (a terminal sends it to the whole group)
        assert proc.wait(timeout=60) == 130
        assert not _listening_addresses(port)  # the server went with it
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proc.stderr.close()
    assert proc.returncode is not None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_serve_killed_with_sigkill_takes_the_server_with_it(trained):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "minicpm_recipes", "serve", str(trained), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not _listening_addresses(port):
            assert proc.poll() is None and time.monotonic() < deadline, "server not ready in time"
            time.sleep(0.5)
        proc.kill()  # cannot be forwarded: the server dies with its parent (PR_SET_PDEATHSIG)
        proc.wait()
        deadline = time.monotonic() + 60
        while _listening_addresses(port):
            assert time.monotonic() < deadline, "the server outlived `serve`"
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_render_export_merges_the_adapter_exactly(trained, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = tmp_path / "merged"
    proc = run_cli("render-export", str(trained), "--export-dir", str(merged), "-o", str(tmp_path / "cfg"))
    assert proc.returncode == 0, proc.stderr
    export_cfg = tmp_path / "cfg" / "tiny_lora_sft_export.yaml"
    chat_cfg = tmp_path / "cfg" / "tiny_lora_sft_merged_infer.yaml"
    assert f"llamafactory-cli export {export_cfg}" in proc.stdout
    lf = Path(sys.executable).parent / "llamafactory-cli"
    run = subprocess.run([str(lf), "export", str(export_cfg)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (merged / "config.json").is_file() and (merged / "tokenizer_config.json").is_file()

    train_cfg = yaml.safe_load(trained.read_text())
    ids = torch.tensor([[1, 3, 90, 88, 74, 87, 204, 41, 74]])
    base = AutoModelForCausalLM.from_pretrained(train_cfg["model_name_or_path"])
    with_adapter = PeftModel.from_pretrained(base, train_cfg["output_dir"]).eval()
    merged_model = AutoModelForCausalLM.from_pretrained(merged).eval()
    plain = AutoModelForCausalLM.from_pretrained(train_cfg["model_name_or_path"]).eval()
    with torch.no_grad():
        expected = with_adapter(ids).logits
        got = merged_model(ids).logits
        untrained = plain(ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, untrained, atol=1e-4)  # the adapter changed something: a real merge

    # the inference config of the merged model answers through LLaMA-Factory's ChatModel
    chat = subprocess.run([sys.executable, "-m", "minicpm_recipes.chat_once", str(chat_cfg), "你好",
                           "max_new_tokens=4", "do_sample=false"], capture_output=True, text=True, timeout=300)
    assert chat.returncode == 0, chat.stderr[-3000:]
    answers = [ln for ln in chat.stdout.splitlines() if ln.startswith("Assistant: ")]
    assert len(answers) == 1 and answers[0][len("Assistant: "):]
    assert json.loads(json.dumps(yaml.safe_load(chat_cfg.read_text())))["model_name_or_path"] == str(merged)
