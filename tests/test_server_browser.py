"""The web page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium) against the live server: type a sentence, press Speak, and the audio element receives
more than 0.5 s of audio the browser itself can decode; clone a voice from an uploaded clip and
from a microphone recording (Chromium's fake capture device).

`.ci/run` installs chromium with apt when it is missing; the test skips only when the binaries
are not on this machine."""

from __future__ import annotations

import shutil

import pytest
from conftest import single_thread, write_clip

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="Chromium and its WebDriver are not installed (apt-get install chromium chromium-driver; .ci/run does it)",
)

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs back home."


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
                "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", "--window-size=1000,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_state(driver, *states: str, timeout: float = 60) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.body.dataset.state") in states)
    return driver.execute_script("return document.body.dataset.state")


def voice_ids(driver) -> list[str]:
    return driver.execute_script("return [...document.getElementById('voice').options].map(o => o.value)")


def test_type_speak_and_the_audio_element_plays_decodable_audio(browser, live_server):
    from selenium.webdriver.common.by import By

    browser.get(live_server + "/")
    assert wait_state(browser, "ready", "error") == "ready"
    assert "default" in voice_ids(browser)
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys(SENTENCE)
    browser.find_element(By.ID, "seed").send_keys("3")
    browser.find_element(By.ID, "speak").click()
    state = wait_state(browser, "done", "error")
    assert state == "done", browser.find_element(By.ID, "status").text
    # What the <audio> element holds: it was fed through MediaSource while the bytes arrived.
    media = browser.execute_script("""
        const p = document.getElementById('player');
        const b = p.buffered;
        return {src: p.src, error: p.error && p.error.message, buffered: b.length ? b.end(b.length - 1) : 0,
                duration: p.duration, streamed: !!(window.MediaSource && MediaSource.isTypeSupported('audio/mpeg'))};
    """)
    assert media["error"] is None and media["src"].startswith("blob:")
    assert media["streamed"], "this Chromium cannot stream MP3 through MediaSource"
    assert media["buffered"] > 0.5, media
    # The download link holds the same stream: decode it with the browser's own decoder.
    decoded = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const link = document.getElementById('download');
        fetch(link.href).then(r => r.arrayBuffer())
          .then(buf => new OfflineAudioContext(1, 1, 24000).decodeAudioData(buf))
          .then(audio => done({seconds: audio.duration, download: link.download, hidden: link.hidden}))
          .catch(err => done({error: String(err)}));
    """)
    assert "error" not in decoded, decoded
    assert decoded["seconds"] > 0.5 and decoded["download"].endswith(".mp3") and not decoded["hidden"]
    assert abs(decoded["seconds"] - media["buffered"]) < 0.2


def test_clone_from_an_upload_and_from_the_microphone(browser, live_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(live_server + "/")
    assert wait_state(browser, "ready", "error") == "ready"
    clip = write_clip(tmp_path / "friend.wav", 5.0, sample_rate=22050, seed=4)
    browser.find_element(By.ID, "clip").send_keys(str(clip))
    browser.find_element(By.ID, "voice-name").send_keys("Browser Friend")
    browser.find_element(By.ID, "add-voice").click()
    WebDriverWait(browser, 30).until(lambda d: "browser-friend" in voice_ids(d))
    assert browser.execute_script("return document.getElementById('voice').value") == "browser-friend"
    assert browser.find_element(By.ID, "delete-voice").is_displayed()

    # The fake capture device plays a beep; four seconds of it make a (strange) voice.
    browser.find_element(By.ID, "record").click()
    WebDriverWait(browser, 10).until(lambda d: "Recording" in d.find_element(By.ID, "clone-status").text)
    browser.execute_script("return new Promise(r => setTimeout(r, 4500))")
    browser.find_element(By.ID, "record").click()
    WebDriverWait(browser, 10).until(lambda d: "Recorded" in d.find_element(By.ID, "clone-status").text)
    browser.find_element(By.ID, "voice-name").clear()
    browser.find_element(By.ID, "voice-name").send_keys("mic")
    browser.find_element(By.ID, "add-voice").click()
    WebDriverWait(browser, 30).until(lambda d: "mic" in voice_ids(d)
                                     or "error" in d.find_element(By.ID, "clone-status").get_attribute("class"))
    assert "mic" in voice_ids(browser), browser.find_element(By.ID, "clone-status").text

    import requests

    for vid in ("browser-friend", "mic"):
        assert requests.delete(f"{live_server}/v1/audio/voices/{vid}").status_code == 200
