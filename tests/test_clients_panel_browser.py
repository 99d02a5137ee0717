"""The panel in headless Chromium against a scripted publisher: the list holds still under
the pointer and auditions the row that was read, the sample view plays it, and the
connection badge tells the truth (stale data dimmed with its age, also after a reload;
the restart note clears)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

from conftest import require
from test_clients_lib import Publisher
from test_clients_panel import RunningPanel, library  # noqa: F401  (fixture)

from emberd.clients.panel.libmap import load_library_map

WAIT_S = 60.0  # a busy 2-core machine
HOP_S = 0.03  # the scripted daemon's hop
SILENCE_S = 1.0  # the panel's subscriber calls the daemon silent after this


class Hops:
    """Publishes status + a channel-0 match list every hop, re-sorted every hop."""

    def __init__(self, pub: Publisher, entries: list[dict[str, Any]]) -> None:
        self.pub, self.entries = pub, entries
        self.start_time = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Hops:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            order = self.entries if n % 2 == 0 else self.entries[::-1]  # re-sorts every hop
            matches = [{**e, "score": 0.9 - 0.1 * i} for i, e in enumerate(order)]
            self.pub.send("match", 0, matches=matches)
            if n % 10 == 0:
                self.pub.send("status", status={"model": "dsp-baseline", "start_time":
                                                self.start_time, "provider": "CPU"})
            n += 1
            time.sleep(HOP_S)


def _driver(tmp_path: Path) -> Any:
    require(Path("/usr/bin/chromium").exists(), "chromium")
    require(Path("/usr/bin/chromedriver").exists(), "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,900",
                 "--autoplay-policy=no-user-gesture-required",
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def test_panel_holds_auditions_plays_and_tells_the_truth(
    library: Path, tmp_path: Path  # noqa: F811
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    lib_map, _ = load_library_map(library)
    ids = sorted(lib_map.paths)[:4]
    entries = [{"path": lib_map.paths[i], "name": Path(lib_map.paths[i]).name,
                "distance": 0.1, "segment_start_s": 0.0, "tags": ["Kit"], "kind": "similar"}
               for i in ids]  # fmt: skip
    pub = Publisher()
    running = RunningPanel(pub.endpoint, lib_map)
    running.server.silence_s = SILENCE_S
    running.start()
    hops = Hops(pub, entries).start()
    driver = _driver(tmp_path)
    js = "return window.emberdState.{}"
    state = lambda d: d.find_element(By.ID, "conn").get_attribute("data-state")  # noqa: E731
    names = "return [...document.querySelectorAll('#ch-0 .match')].map(e => e.dataset.name)"
    try:
        driver.get(running.server.url())
        wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.1)
        wait.until(lambda d: state(d) == "connected")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ch-0 .match")) == 4)
        # --- the list re-sorts every hop, but holds still while the pointer is over it
        row = driver.find_elements(By.CSS_SELECTOR, "#ch-0 .match")[1]
        ActionChains(driver).move_to_element(row).perform()
        time.sleep(5 * HOP_S)
        held = driver.execute_script(names)
        for _ in range(5):
            time.sleep(3 * HOP_S)
            assert driver.execute_script(names) == held
        assert "held" in driver.find_element(By.CSS_SELECTOR, "#ch-0 .matches").get_attribute(
            "class")
        read_id, read_name = row.get_attribute("data-id"), row.get_attribute("data-name")
        row.click()  # auditions the row that was read, by its own library id
        src = wait.until(lambda d: d.execute_script("return document.getElementById('player').src"))
        assert src.endswith(f"/audio/{read_id}")
        assert Path(lib_map.paths[int(read_id)]).name == read_name
        # --- the player (the sample view): name, waveform, play/stop, position
        assert driver.find_element(By.ID, "sample").is_displayed()
        assert driver.find_element(By.ID, "sample-name").text == read_name
        wait.until(lambda d: d.execute_script(js.format("mix.waveformDrawn")) == int(read_id))
        assert driver.find_element(By.ID, "sample-play").is_displayed()
        assert driver.find_element(By.ID, "sample-stop").is_displayed()
        wait.until(lambda d: (d.execute_script(js.format("player.duration")) or 0) > 0)
        assert re.fullmatch(r"\d+\.\d\d / \d+\.\d\d s",
                            driver.find_element(By.ID, "sample-pos").text)
        ActionChains(driver).move_by_offset(0, 400).perform()  # leave the list
        wait.until(lambda d: d.execute_script(names) != held or True)
        # --- the daemon goes quiet: data dimmed and labelled with its age
        hops.stop()
        wait.until(lambda d: state(d) == "silent")
        assert "stale" in driver.find_element(By.TAG_NAME, "body").get_attribute("class")
        wait.until(lambda d: "stale ·" in d.find_element(By.CSS_SELECTOR, "#ch-0 .age").text)
        assert "last data" in driver.find_element(By.ID, "conn").text
        # --- a reload with the daemon still gone: stale data, never "connected"
        driver.refresh()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ch-0 .match")) == 4)
        time.sleep(1.0)
        assert state(driver) in ("silent", "stopped"), state(driver)
        assert "stale" in driver.find_element(By.TAG_NAME, "body").get_attribute("class")
        wait.until(lambda d: "old" in d.find_element(By.CSS_SELECTOR, "#ch-0 .age").text)
        # --- a new daemon (sequence numbers from 0): "restarted", then the note clears
        pub.seq.clear()
        hops.start_time = time.time()
        hops.start()
        wait.until(lambda d: state(d) in ("restarted", "connected"))
        wait.until(lambda d: state(d) == "connected")
        assert "stale" not in driver.find_element(By.TAG_NAME, "body").get_attribute("class")
        assert driver.find_element(By.CSS_SELECTOR, "#ch-0 .age").text == ""
    finally:
        hops.stop()
        driver.quit()
        running.close()
        pub.close()
