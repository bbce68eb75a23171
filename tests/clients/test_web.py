"""The web gateway (clients/web) against the real tritonserver: its WebSocket protocol and limits with
a plain websockets client, and the page itself in headless Chromium with a fake microphone fed from a
WAV file (Debian's chromium + chromium-driver, installed by `make test`'s system-deps).

Chromium's fake microphone resamples and loops its file, so the browser test stops after the clip's
length (the page's ?max_seconds=) and compares the final transcript with the offline `asr` transcript
of exactly the audio the gateway received (its --debug-audio endpoint), not of the file."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import helpers
import numpy as np
import pytest
import soundfile as sf
import soxr
from mambaserve.clients import ASRClient
from mambaserve.serving import metrics as m
from mambaserve.serving.server import free_port
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.server

RATE = 16_000
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


# ------------------------------------------------------------------------------------------------
# A gateway process next to the session's tritonserver
# ------------------------------------------------------------------------------------------------
def _get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, body: bytes, timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextlib.contextmanager
def run_gateway(grpc_url: str, log_dir: Path, *args: str):
    """`python -m mambaserve.clients.web` on a free port; yields "127.0.0.1:PORT"."""
    port = free_port()
    log_path = log_dir / f"gateway-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mambaserve.clients.web",
                "--grpc-url",
                grpc_url,
                "--port",
                str(port),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=helpers.ROOT,
        )
    url = f"127.0.0.1:{port}"

    def up() -> bool:
        try:
            return _get(f"http://{url}/api/config", timeout=2)[0] == 200
        except OSError:
            return proc.poll() is not None

    try:
        assert helpers.wait_for(up, timeout=60) and proc.poll() is None, log_path.read_text()[-3000:]
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    """Default limits, with the received audio kept for comparison."""
    with run_gateway(triton_server.grpc_url, tmp_path_factory.mktemp("gateway"), "--debug-audio") as url:
        yield url


@pytest.fixture(scope="module")
def strict(triton_server, tmp_path_factory):
    """Small limits, to reach each of them quickly."""
    args = ["--max-streams", "2", "--max-stream-seconds", "2", "--idle-seconds", "3"]
    args += ["--max-upload-seconds", "2", "--max-upload-mb", "0.25", "--debug-audio"]
    with run_gateway(triton_server.grpc_url, tmp_path_factory.mktemp("strict"), *args) as url:
        yield url


@pytest.fixture(scope="module")
def asr(triton_server):
    with ASRClient(triton_server.grpc_url, protocol="grpc") as client:
        yield client


# ------------------------------------------------------------------------------------------------
# A websockets client of /ws/stream
# ------------------------------------------------------------------------------------------------
class Run:
    """What one stream saw: the gateway's messages in order and how the socket was closed."""

    def __init__(self):
        self.messages: list[dict] = []
        self.close_code: int | None = None

    def of(self, kind: str) -> list[dict]:
        return [x for x in self.messages if x["type"] == kind]

    @property
    def final(self) -> dict:
        (final,) = self.of("final")
        return final

    @property
    def error(self) -> dict:
        (error,) = self.of("error")
        return error


def pcm(audio: np.ndarray, fmt: str) -> bytes:
    if fmt == "s16":
        return (np.clip(audio, -1, 1) * 32767).round().astype("<i2").tobytes()
    return audio.astype("<f4").tobytes()


async def _stream(
    url: str,
    audio: np.ndarray,
    *,
    fmt: str = "f32",
    speed: float = 1.5,
    piece_s: float = 0.1,
    start: dict | None = None,
    stop: bool = True,
    after_partial: str | None = None,
) -> Run:
    """Send `audio` in pieces at `speed` × real time, then stop; collect every message until the close.

    after_partial="abort" cuts the TCP connection as soon as the first partial arrives (mid-utterance);
    "close" closes the WebSocket cleanly at that point without a stop message.
    """
    run = Run()
    async with connect(f"ws://{url}/ws/stream", max_size=None) as ws:
        got_partial = asyncio.Event()

        async def receive() -> None:
            try:
                async for text in ws:
                    run.messages.append(json.loads(text))
                    if run.messages[-1]["type"] == "partial":
                        got_partial.set()
            except ConnectionClosed:
                pass

        reader = asyncio.create_task(receive())
        n = max(1, int(piece_s * RATE))
        with contextlib.suppress(ConnectionClosed):  # a refused stream is closed by the gateway at once
            await ws.send(json.dumps(start or {"type": "start", "sample_rate": RATE, "format": fmt}))
            for i in range(0, len(audio), n):
                await ws.send(pcm(audio[i : i + n], fmt))
                if speed > 0:
                    await asyncio.sleep(min(n, len(audio) - i) / RATE / speed)
                if after_partial and got_partial.is_set():
                    break
            if after_partial:
                await asyncio.wait_for(got_partial.wait(), 30)
                if after_partial == "abort":
                    ws.transport.abort()
                else:
                    await ws.close()
                reader.cancel()
                return run
            if stop:
                await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, 120)
        run.close_code = ws.close_code
    return run


def stream(url: str, audio: np.ndarray, **kwargs) -> Run:
    return asyncio.run(_stream(url, audio, **kwargs))


def encoder_metric(triton_server, name: str) -> float:
    return helpers.metrics(triton_server).get(name, model="streaming_encoder")


def gateway_streams(url: str) -> int:
    return json.loads(_get(f"http://{url}/api/config")[1])["streams_in_use"]


# ------------------------------------------------------------------------------------------------
# Gateway: protocol and limits (no browser)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["f32", "s16"])
def test_stream_partials_then_final_equal_to_offline(gateway, asr, speech_clips, fmt):
    audio = speech_clips[1][1]
    run = stream(gateway, audio, fmt=fmt)
    assert run.messages[0]["type"] == "ready"
    assert run.messages[0]["limits"]["max_rate"] == 2.0
    partials = run.of("partial")
    assert partials and any(p["text"] for p in partials), run.messages
    assert run.messages[-1] == run.final  # nothing after the final
    sent = np.frombuffer(pcm(audio, "s16"), "<i2") / 32768.0 if fmt == "s16" else audio
    assert run.final["audio_s"] == pytest.approx(len(audio) / RATE)
    assert run.final["text"] == asr.transcribe(sent.astype(np.float32)).text
    assert run.close_code == 1000


def test_upload_equals_served_asr_with_prompt(gateway, asr, speech_clips, tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, speech_clips[4][1], RATE, subtype="PCM_16")
    status, body = _post(f"http://{gateway}/api/transcribe?prompt=stella%2C%20things", path.read_bytes())
    assert status == 200, body
    assert body["text"] == asr.transcribe(str(path), prompt="stella, things").text
    assert body["audio_s"] == pytest.approx(len(speech_clips[4][1]) / RATE, abs=1e-3)


def test_too_fast_audio_is_refused_and_its_sequence_ended(gateway, triton_server, asr, speech_clips):
    reaped = encoder_metric(triton_server, m.SEQUENCES_REAPED)
    audio = np.concatenate([clip for _, clip in speech_clips])  # ~12 s
    assert len(audio) / RATE > 8
    run = stream(gateway, audio, speed=0, piece_s=0.5)  # as fast as the socket takes it
    assert run.error["code"] == "rate"
    assert "faster than 2× real time" in run.error["message"]
    assert run.close_code == 1008 and not run.of("final")
    # The sequence had started on the server (its first chunks went through): the gateway ENDed it.
    assert helpers.wait_for(lambda: encoder_metric(triton_server, m.SLOTS_IN_USE) == 0, timeout=10)
    assert encoder_metric(triton_server, m.SEQUENCES_REAPED) == reaped
    assert helpers.wait_for(lambda: gateway_streams(gateway) == 0, timeout=10)


@pytest.mark.parametrize("how", ["abort", "close"])
def test_socket_closed_mid_utterance_ends_the_sequence(gateway, triton_server, asr, speech_clips, how):
    reaped = encoder_metric(triton_server, m.SEQUENCES_REAPED)
    run = stream(gateway, speech_clips[1][1], speed=1.0, after_partial=how)
    assert run.of("partial") and not run.of("final")
    # Freed by the gateway's END well before the server's 15 s idle reaper would have, and not reaped.
    assert helpers.wait_for(lambda: encoder_metric(triton_server, m.SLOTS_IN_USE) == 0, timeout=8)
    assert encoder_metric(triton_server, m.SEQUENCES_REAPED) == reaped
    assert helpers.wait_for(lambda: gateway_streams(gateway) == 0, timeout=10)
    audio = speech_clips[0][1]  # and the next stream works
    assert stream(gateway, audio).final["text"] == asr.transcribe(audio).text


def test_too_many_streams_are_refused_with_a_clear_message(strict, asr, speech_clips):
    async def scenario() -> tuple[Run, list[str]]:
        held = []
        try:
            for _ in range(2):
                ws = await connect(f"ws://{strict}/ws/stream")
                held.append(ws)
                await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
                assert json.loads(await ws.recv())["type"] == "ready"
                await ws.send(pcm(speech_clips[0][1][: RATE // 4], "f32"))
            third = await _stream(strict, speech_clips[0][1][:RATE])
            finals = []
            for ws in held:
                await ws.send(json.dumps({"type": "stop"}))
                async for text in ws:
                    if json.loads(text)["type"] == "final":
                        finals.append(json.loads(text)["text"])
            return third, finals
        finally:
            for ws in held:
                await ws.close()

    third, finals = asyncio.run(scenario())
    assert third.error["code"] == "busy"
    assert "all 2 streams of this gateway are in use" in third.error["message"]
    assert third.close_code == 1013 and not third.of("ready")
    assert len(finals) == 2  # the two held streams were not disturbed
    audio = speech_clips[2][1][: RATE * 3 // 2]  # and a slot is free again
    assert stream(strict, audio).final["text"] == asr.transcribe(audio).text


def test_length_cap_ends_the_stream_with_its_final(strict, asr, speech_clips):
    audio = speech_clips[1][1]
    assert len(audio) > 2 * RATE
    run = stream(strict, audio, speed=1.5, stop=False)
    assert run.final["audio_s"] == pytest.approx(2.0)
    assert run.final["text"] == asr.transcribe(audio[: 2 * RATE]).text
    assert run.error["code"] == "length" and "2 s limit" in run.error["message"]
    assert run.close_code == 1000


def test_idle_stream_is_ended(strict, asr, speech_clips):
    audio = speech_clips[0][1][:RATE]
    run = stream(strict, audio, speed=1.0, stop=False)  # then silence on the socket
    assert run.final["text"] == asr.transcribe(audio).text
    assert run.error["code"] == "idle"


def test_protocol_errors_are_explained(strict):
    run = stream(strict, np.zeros(0, np.float32), start={"type": "start", "sample_rate": 48000})
    assert run.error["code"] == "protocol" and "16000 Hz" in run.error["message"]
    assert run.close_code == 1008
    run = stream(strict, np.zeros(0, np.float32), start={"type": "hello"})
    assert run.error["code"] == "protocol" and "start" in run.error["message"]


def test_upload_limits(strict, asr, speech_clips, tmp_path):
    long = tmp_path / "long.wav"
    sf.write(long, speech_clips[1][1][: 3 * RATE], RATE, subtype="PCM_16")  # 96 kB: under the byte cap
    status, body = _post(f"http://{strict}/api/transcribe", long.read_bytes())
    assert status == 413 and body["error"]["code"] == "length"
    assert "3.0 s of audio; the limit is 2 s" in body["error"]["message"]
    status, body = _post(f"http://{strict}/api/transcribe", b"\0" * 300_000)
    assert status == 413 and body["error"]["code"] == "size"
    status, body = _post(f"http://{strict}/api/transcribe", b"not audio at all")
    assert status == 400 and "cannot decode audio" in body["error"]["message"]
    ok = tmp_path / "ok.wav"
    sf.write(ok, speech_clips[0][1][: RATE * 3 // 2], RATE, subtype="PCM_16")
    status, body = _post(f"http://{strict}/api/transcribe", ok.read_bytes())
    assert status == 200 and body["text"] == asr.transcribe(str(ok)).text


def test_unreachable_server_is_explained(tmp_path, speech_clips):
    with run_gateway(f"127.0.0.1:{free_port()}", tmp_path) as url:  # nothing listens there
        config = json.loads(_get(f"http://{url}/api/config")[1])
        assert config["ready"] == {"asr": False, "asr_streaming": False}
        run = stream(url, speech_clips[0][1])
        assert run.error["code"] == "unavailable" and "unreachable" in run.error["message"]
        assert run.close_code == 1011 and not run.of("final")
        status, body = _post(f"http://{url}/api/transcribe", _wav_bytes(speech_clips[0][1]))
        assert status == 503 and "unreachable" in body["error"]["message"]
        assert gateway_streams(url) == 0


def _wav_bytes(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# The page in headless Chromium with a fake microphone
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mic_clip(speech_clips, tmp_path_factory) -> tuple[Path, int]:
    """A 16 kHz WAV for the fake microphone: speech with silence around it; its length in samples."""
    speech = speech_clips[4][1]
    clip = np.concatenate([np.zeros(RATE // 2, np.float32), speech, np.zeros(RATE, np.float32)])
    clip = clip[: len(clip) - len(clip) % 16]  # a whole number of milliseconds
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    sf.write(path, clip, RATE, subtype="PCM_16")
    return path, len(clip)


@pytest.fixture(scope="module")
def browser(mic_clip, tmp_path_factory):
    assert shutil.which("chromium") and shutil.which("chromedriver"), (
        "Debian's chromium and chromium-driver are needed: `make system-deps` installs them"
    )
    options = Options()
    options.binary_location = CHROMIUM
    flags = (
        "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
    )
    flags += " --disable-component-update --disable-sync --disable-dev-shm-usage --window-size=820,800"
    flags += " --use-fake-device-for-media-stream --use-fake-ui-for-media-stream"
    for flag in flags.split():
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument(f"--use-file-for-fake-audio-capture={mic_clip[0]}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, script: str, timeout: float = 90):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script))


@pytest.mark.parametrize("resample", ["browser", "worklet"])
def test_page_streams_the_microphone(browser, gateway, asr, mic_clip, resample):
    """resample: a 16 kHz AudioContext (Chromium resamples), or the worklet's own resampler (the
    fallback for browsers that cannot open a 16 kHz context on the microphone)."""
    _, n_samples = mic_clip
    browser.get(f"http://{gateway}/?max_seconds={n_samples / RATE}&resample={resample}")
    _wait(browser, "return document.getElementById('server-status').textContent.startsWith('server ready')")
    assert "2× real time" in browser.find_element(By.ID, "limits").text
    browser.find_element(By.ID, "record").click()
    state = _wait(
        browser, "const s = document.body.dataset.state; return (s === 'done' || s === 'error') && s"
    )
    error = browser.find_element(By.ID, "error")
    assert state == "done", error.text
    assert not error.is_displayed()
    partials = browser.execute_script("return window.mambaservePartials")
    assert any(partials), "no partial transcript reached the page"
    (item,) = browser.find_elements(By.CSS_SELECTOR, "#finals li")
    final = item.get_attribute("data-text")
    assert final and item.text == final
    # The audio the gateway received: as long as the page was told to record, and speech, not silence.
    status, wav = _get(f"http://{gateway}/debug/audio/{item.get_attribute('data-stream-id')}.wav")
    assert status == 200
    received, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert rate == RATE and len(received) == n_samples
    assert np.sqrt(np.mean(received**2)) > 0.01
    assert final == asr.transcribe(received).text


def test_page_stop_button_ends_the_stream(browser, gateway, asr):
    """A person's way: Stop once words appear; the audio the worklet still held is sent before END."""
    browser.get(f"http://{gateway}/")
    _wait(browser, "return document.getElementById('server-status').textContent.startsWith('server ready')")
    browser.find_element(By.ID, "record").click()
    _wait(browser, "return window.mambaservePartials.some((p) => p.length > 0)")
    browser.find_element(By.ID, "stop").click()
    state = _wait(
        browser, "const s = document.body.dataset.state; return (s === 'done' || s === 'error') && s"
    )
    assert state == "done", browser.find_element(By.ID, "error").text
    (item,) = browser.find_elements(By.CSS_SELECTOR, "#finals li")
    status, wav = _get(f"http://{gateway}/debug/audio/{item.get_attribute('data-stream-id')}.wav")
    received, _ = sf.read(io.BytesIO(wav), dtype="float32")
    assert status == 200 and len(received) > 0.3 * RATE
    assert item.get_attribute("data-text") == asr.transcribe(received).text


def test_page_uploads_a_file_with_a_prompt(browser, gateway, asr, speech_clips, tmp_path):
    # A 22.05 kHz stereo file: the gateway decodes and resamples it like every other client.
    audio = soxr.resample(speech_clips[3][1], RATE, 22_050).astype(np.float32)
    path = tmp_path / "upload.wav"
    sf.write(path, np.stack([audio, audio], axis=1), 22_050, subtype="PCM_16")
    browser.find_element(By.ID, "prompt").send_keys("Triton, Mamba")
    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.ID, "upload").click()
    state = _wait(browser, "const s = document.body.dataset.upload; return s !== 'running' && s")
    assert state == "done", browser.find_element(By.ID, "error").text
    shown = browser.find_element(By.ID, "upload-result").get_attribute("data-text")
    assert shown == asr.transcribe(str(path), prompt="Triton, Mamba").text
    screenshot = Path(os.environ.get("MAMBASERVE_WEB_SCREENSHOT") or tmp_path / "page.png")
    assert browser.save_screenshot(str(screenshot))


def test_page_shows_errors(browser, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not audio")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    browser.find_element(By.ID, "upload").click()
    assert _wait(browser, "return document.body.dataset.upload === 'error'")
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed()
    assert error.text.startswith("Upload failed: cannot decode audio")
