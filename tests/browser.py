"""Debian's Chromium driven by Selenium through Debian's chromedriver, for the live page tests."""
import os
import shutil
import tempfile
import time

from conftest import need_module, need_tool

ARTIFACTS = os.environ.get("HOOFHEARTED_ARTIFACTS") or os.path.join(tempfile.gettempdir(), "hoofhearted-artifacts")


def chrome(width=1280, height=900, scheme=None, reduced_motion=False, insecure=False):
    """A headless Chromium window of this size; ``scheme`` 'dark' or 'light' emulates the user's choice."""
    binary, driver_path = need_tool("chromium"), need_tool("chromedriver")
    webdriver = need_module("selenium.webdriver", "Chrome")
    options_cls = need_module("selenium.webdriver.chrome.options", "Options")
    service_cls = need_module("selenium.webdriver.chrome.service", "Service")
    opts = options_cls()
    opts.binary_location = binary
    profile = tempfile.mkdtemp(prefix="hoofhearted-chromium-")
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        opts.add_argument(arg)
    if os.geteuid() == 0:
        opts.add_argument("--no-sandbox")     # Chromium refuses to sandbox as root
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    if insecure:
        opts.accept_insecure_certs = True     # the test CA; TLS itself is checked in test_webconfig
    drv = webdriver(options=opts, service=service_cls(executable_path=driver_path))
    drv._hh_profile = profile
    features = []
    if scheme:
        features.append({"name": "prefers-color-scheme", "value": scheme})
    if reduced_motion:
        features.append({"name": "prefers-reduced-motion", "value": "reduce"})
    if features:
        drv.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": features})
    drv.set_window_size(width, height)
    return drv


def quit(drv):
    try:
        drv.quit()
    finally:
        shutil.rmtree(drv._hh_profile, ignore_errors=True)


def set_auth_header(drv, user, password):
    """Basic auth for every request of this page, EventSource included."""
    import base64
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    drv.execute_cdp_cmd("Network.enable", {})
    drv.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": "Basic " + token}})


def wait_for(fn, timeout, what, interval=0.1):
    """Poll ``fn`` until it returns something true; that value, or AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")
        time.sleep(interval)


def text(drv, element_id):
    """Rendered text, read in one script call: the page redraws lists between WebDriver calls."""
    return drv.execute_script("return document.getElementById(arguments[0]).innerText;", element_id)


def state(drv):
    return drv.execute_script("return document.getElementById('status').getAttribute('data-state');")


def responses(drv):
    """(url, status, headers) of every response the browser received so far (the performance log)."""
    import json
    out = []
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.responseReceived":
            r = msg["params"]["response"]
            out.append((r["url"], r["status"], {k.lower(): v for k, v in r["headers"].items()}))
    return out


def console_errors(drv):
    return [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def screenshot(drv, name):
    """Whole page as PNG under ARTIFACTS; returns the path."""
    import base64
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    shot = drv.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    return path
