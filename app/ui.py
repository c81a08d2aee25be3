"""Shared dashboard pieces: page discovery, the model picker, the prompt box, token views
and error handling.

Pages stay thin: they gather parameters with these helpers (an analysis' parameters with
:func:`params_form`, generated from its Params, so a default lives only there), call one
analysis, and draw the Result's figures. The model is loaded once per process (``st.cache_resource``) and every
use of it goes through the probe layer, which holds the model's lock.

Pages are the files ``app/pages/NN_name.py`` (NN: two-digit order). Their title is a
``TITLE = "..."`` constant or else the first line of the module docstring; ``discover_pages``
finds them without importing them, so adding a page needs no edit anywhere else.
"""

from __future__ import annotations

import ast
import dataclasses
import html
import re
import types
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from mechscope.probes.errors import InputError, MechscopeError
from mechscope.probes.models import DEFAULT_MODEL, available_models, load
from mechscope.probes.prompts import DEFAULT_PROMPT

PAGES_DIR = Path(__file__).resolve().parent / "pages"
_PAGE_RE = re.compile(r"^(\d\d)_(\w+)\.py$")


# ---------------------------------------------------------------------------------------
# Pages


@dataclass(frozen=True)
class PageInfo:
    path: Path
    order: int
    slug: str
    title: str


def page_title(path: Path) -> str:
    """``TITLE = "..."`` if the page defines it, else its docstring's first line, else the
    file name."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "TITLE" for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
    doc = ast.get_docstring(tree)
    if doc and doc.strip():
        return doc.strip().splitlines()[0].rstrip(".")
    m = _PAGE_RE.match(Path(path).name)
    return (m.group(2) if m else Path(path).stem).replace("_", " ").capitalize()


def discover_pages(pages_dir: Path | str = PAGES_DIR) -> list[PageInfo]:
    """Every ``NN_name.py`` page, in NN order."""
    out = []
    for p in Path(pages_dir).glob("*.py"):
        m = _PAGE_RE.match(p.name)
        if m:
            out.append(PageInfo(p.resolve(), int(m.group(1)), m.group(2), page_title(p)))
    return sorted(out, key=lambda i: (i.order, i.slug))


PAGE_STATE = "_page_title"  # the title of the page this session shows (set by Home.py)


def navigation(pages_dir: Path | str = PAGES_DIR, home=None):
    """Build ``st.navigation`` over the discovered pages. The landing page is ``home`` (a
    callable: the front page) if given, else the first page."""
    infos = discover_pages(pages_dir)
    pages = [st.Page(str(i.path), title=i.title, url_path=i.slug, default=(home is None and n == 0))
             for n, i in enumerate(infos)]
    if home is not None:
        pages.insert(0, st.Page(home, title="Home", url_path="home", default=True))
    page = st.navigation(pages)
    st.session_state[PAGE_STATE] = page.title
    return page


# ---------------------------------------------------------------------------------------
# Model


@st.cache_resource(show_spinner="Loading model (once per process)…")
def _cached_model(name: str):
    # A failing load raises; st.cache_resource does not cache exceptions, so the next
    # rerun tries again (e.g. after the package was reinstalled).
    return load(name)


def model_choices() -> list[tuple[str, str]]:
    """(name, label) pairs; models whose weights are missing are labelled as such."""
    out = []
    for spec, installed in available_models():
        label = spec.name + ("" if installed else " (not installed)")
        out.append((spec.name, label))
    return out


def current_model_name() -> str:
    """The name chosen in the sidebar (a typed TransformerLens name wins over the list)."""
    other = (st.session_state.get("model_other") or "").strip()
    return other or st.session_state.get("model_name", DEFAULT_MODEL)


def sidebar_model():
    """Model picker in the sidebar; returns the loaded ``(model, spec)`` or stops the page.

    The embedded default is preselected; embedded models whose package is missing are listed
    as "(not installed)" and selecting one shows how to install it. Any TransformerLens name
    can be typed; it loads only from the local Hugging Face cache.
    """
    choices = model_choices()
    names = [n for n, _ in choices]
    labels = dict(choices)
    if "model_name" not in st.session_state:
        st.session_state["model_name"] = DEFAULT_MODEL
    name = st.sidebar.selectbox(
        "Model", names, index=names.index(st.session_state["model_name"]) if st.session_state["model_name"] in names else 0,
        format_func=lambda n: labels[n], key="model_select",
    )
    st.session_state["model_name"] = name
    st.sidebar.text_input("…or a TransformerLens model name (local HF cache only)", key="model_other",
                          placeholder="e.g. gpt2")
    name = current_model_name()
    declare_page(st.session_state.get(PAGE_STATE) or "a page")  # probe calls below report any wait here
    with guard():
        loaded = _cached_model(name)
        spec = loaded.spec
        cfg = loaded.model.cfg
        kv = cfg.n_key_value_heads or cfg.n_heads
        st.sidebar.caption(f"{spec.description}  \nSource: {spec.source}  \nLicence: {spec.licence}  \n"
                           f"{cfg.n_layers} layers × {cfg.n_heads} heads ({kv} KV heads), d_mlp {cfg.d_mlp}  \n"
                           f"n_ctx {spec.n_ctx}; BOS by default: {'yes' if spec.prepend_bos else 'no'}")
        sidebar_runs()
        open_linked_run()
        return loaded
    st.stop()


# ---------------------------------------------------------------------------------------
# The view in the URL: a link with these query parameters reproduces what a page shows


URL_PARAMS = ("prompt", "layer", "head", "interventions", "strategy")


def url_value(name: str, default=None):
    """The URL's value for ``name`` (one of :data:`URL_PARAMS`; JSON for interventions and
    strategy), else ``default``."""
    raw = st.query_params.get(name)
    if raw is None or raw == "":
        return default
    if name in ("interventions", "strategy"):
        import json

        try:
            return json.loads(raw)
        except ValueError:
            st.error(f"The link's {name} is not valid JSON; ignored.")
            return default
    return raw


def set_url(name: str, value) -> None:
    """Write the value in use to the URL (so copying the link reproduces the view)."""
    if name in ("interventions", "strategy"):
        import json

        text = "" if not value else json.dumps(value, separators=(",", ":"), sort_keys=True)
    else:
        text = "" if value is None else str(value)
    if text:
        if st.query_params.get(name) != text:
            st.query_params[name] = text
    elif name in st.query_params:
        del st.query_params[name]


def url_index(name: str, default: int, size: int | None = None) -> int:
    """An index (layer, head) from the URL, checked by :func:`check_index`; a bad one is one
    ``st.error`` line and ``default`` is used."""
    linked = url_value(name)
    if linked is None:
        return default
    try:
        return check_index(name, linked, size)
    except InputError as exc:
        st.error(f"Link: {exc}")
        return default


def prompt_box(label: str = "Prompt", key: str = "prompt", default: str = DEFAULT_PROMPT, height: int = 100) -> str:
    """A prompt text area; it starts from the URL's ``prompt`` if given and writes its value
    back there."""
    if key not in st.session_state:
        st.session_state[key] = url_value("prompt", default)
    value = st.text_area(label, key=key, height=height)
    if len(value) <= 2000:  # longer prompts do not fit a link
        set_url("prompt", value)
    return value


def bos_toggle(spec, key: str = "prepend_bos") -> bool:
    """Checkbox for prepending the model's BOS token; defaults to the model's policy."""
    label = f"Prepend BOS ({spec.bos_token})" if spec.bos_token else "Prepend BOS"
    return st.checkbox(label, value=bool(spec.prepend_bos), key=f"{key}:{spec.name}",
                       disabled=spec.bos_token is None and not spec.prepend_bos)


def check_index(what: str, value, size: int | None) -> int:
    """One message everywhere for an out-of-range index typed into a widget (a layer, head,
    neuron, SAE latent…): an int in ``0..size-1`` (``size`` None: any non-negative int)."""
    try:
        i = int(value)
        if i != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number, not {value!r}.") from None
    if i < 0 or (size is not None and i >= size):
        rng = f"0..{size - 1}" if size is not None else "0 or more"
        raise InputError(f"{what} {i} is out of range ({rng}).")
    return i


def index_input(where, label: str, size: int, default: int, key: str) -> int:
    """A typed index (layer, neuron, SAE latent…) with the one out-of-range message: the widget
    takes any whole number; one outside ``0..size-1`` gives :func:`check_index`'s line plus
    "Not applied." under it, and ``default`` is used."""
    value = where.number_input(f"{label} (0–{size - 1})", value=int(default), step=1, key=key)
    try:
        return check_index(label, value, size)
    except InputError as exc:
        where.error(f"{exc} Not applied.")
        return int(default)


@contextmanager
def guard():
    """Show a MechscopeError as one ``st.error`` line and stop the page, never a traceback."""
    try:
        yield
    except MechscopeError as exc:
        st.error(str(exc))
        st.stop()


# ---------------------------------------------------------------------------------------
# Token views


def _chip_colour(value: float, vmax: float) -> str:
    """Blue for positive, red for negative, alpha by |value| / vmax."""
    a = 0.0 if vmax <= 0 else min(abs(value) / vmax, 1.0)
    rgb = "33,102,172" if value >= 0 else "178,24,43"
    return f"rgba({rgb},{0.08 + 0.72 * a:.3f})"


MAX_CHIPS = 400  # token chips drawn at once; longer inputs are shown through a window


def token_chips(tokens, values=None, vmax: float | None = None, fmt: str = "{:+.3f}", offset: int = 0) -> str:
    """HTML for tokens as chips (whitespace made visible); with ``values``, coloured by sign
    and size and shown on hover. ``offset``: the position of ``tokens[0]`` (hover labels)."""
    parts = []
    if values is not None and vmax is None:
        vmax = max((abs(float(v)) for v in values), default=0.0)
    for j, tok in enumerate(tokens):
        i = j + offset
        shown = html.escape(str(tok)).replace(" ", "␣").replace("\n", "↵")
        if values is None:
            bg, title = "rgba(128,128,128,0.15)", f"{i}"
        else:
            v = float(values[j])
            bg, title = _chip_colour(v, vmax or 0.0), f"{i}: {fmt.format(v)}"
        parts.append(
            f'<span class="mechscope-token" title="{html.escape(title)}" style="background:{bg};'
            f'border-radius:4px;padding:1px 4px;margin:1px;display:inline-block;font-family:monospace">{shown}</span>'
        )
    return '<div class="mechscope-tokens" style="line-height:1.9">' + "".join(parts) + "</div>"


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md_escape(text: str) -> str:
    """Plain text for ``st.markdown`` (no formatting, links or LaTeX; newlines kept)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", "  \n")


def window(n: int, size: int, key: str, label: str = "First position shown") -> tuple[int, int]:
    """``(start, stop)`` of a window of at most ``size`` of ``n`` positions: everything when
    it fits, else a position slider (key ``key``)."""
    if n <= size:
        return 0, n
    start = st.slider(label, 0, n - size, 0, step=max(1, size // 4), key=key,
                      help=f"{n} positions; {size} are shown at a time")
    return int(start), int(start) + size


def show_tokens(tokens, values=None, vmax: float | None = None, caption: str | None = None,
                key: str = "tokens", max_chips: int = MAX_CHIPS) -> None:
    """Token chips; beyond ``max_chips`` tokens, a window with a position slider and a
    one-line summary of the whole (the colour scale stays that of the whole input)."""
    tokens = list(tokens)
    n = len(tokens)
    if values is not None and vmax is None:
        vmax = max((abs(float(v)) for v in values), default=0.0)
    a, b = window(n, max_chips, key=f"{key}_window", label="Tokens from position")
    vals = None if values is None else [float(v) for v in list(values)[a:b]]
    st.markdown(token_chips(tokens[a:b], vals, vmax, offset=a), unsafe_allow_html=True)
    if b - a < n:
        note = f"Tokens {a}–{b - 1} of {n}."
        if values is not None:
            import numpy as np

            v = np.asarray(values, dtype=float)
            note += (f" Whole input: min {v.min():+.3g} at {int(v.argmin())}, max {v.max():+.3g} at "
                     f"{int(v.argmax())}, mean {v.mean():+.3g}.")
        st.caption(note)
    if caption:
        st.caption(caption)


# ---------------------------------------------------------------------------------------
# Running analyses from pages: one memo and one progress bar for every page


def st_progress(label: str = "Forward passes"):
    """A ``progress(done, total)`` callback drawing an ``st.progress`` bar."""
    bar = st.progress(0.0, text=label)

    def cb(done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{label} {done}/{total}")

    return cb


def memo_key(slot: str, params, model=None) -> tuple:
    """What identifies a page result: the slot, the model and the (frozen, typed) Params."""
    from mechscope.probes.models import model_id

    return (slot, model_id(model) if model is not None else None, repr(params))


def stored(slot: str, params, model=None):
    """The result kept for ``slot`` if it was computed with these parameters, else None.

    A background run of the same parameters (:func:`run_analysis`) counts too: while it runs,
    its progress bar and Cancel button are drawn here; once done, its saved Result is
    returned (and kept) exactly as a foreground one."""
    memo = st.session_state.get(f"memo_{slot}")
    key = memo_key(slot, params, model)
    if memo is not None and memo[0] == key:
        return memo[1]
    handle = _live_run(key)
    if handle is None:
        return None
    if handle.status == "running":
        _run_panel(handle.run_id)
        return None
    if handle.status == "done":
        with guard():
            result = handle.result()
            st.session_state[f"memo_{slot}"] = (key, result)
            return result
    if handle.status == "failed":
        st.error(f"Background run {handle.run_id} failed: {handle.error}")
    else:
        st.caption(f"Background run {handle.run_id} was {handle.status}.")
    if st.button("Run again", key=f"rerun_{handle.run_id}"):
        _live_runs().pop(handle.run_id, None)
        st.rerun()
    return None


def _session_tag() -> str:
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        return f"session {ctx.session_id[:6]}" if ctx is not None else "this process"
    except Exception:  # outside a Streamlit run (a plain script or a test harness)
        return "this process"


def run_label(what: str) -> str:
    """How a run is named to the users queued behind it: what it is and whose session."""
    return f"{what} ({_session_tag()})"


def _in_cached_function() -> bool:
    try:
        from streamlit.runtime.scriptrunner_utils.script_run_context import in_cached_function

        return bool(in_cached_function.get())
    except ImportError:  # another Streamlit layout: assume not
        return False


def queue_notice(status=None):
    """An ``on_wait(holder, position)`` for :mod:`probes.locks` drawing into ``status`` (an
    ``st.empty``): "Queued behind <run> (position n)" while waiting, then how long it waited
    and behind whom."""
    import time

    status = st.empty() if status is None else status
    start: list[float] = []

    def on_wait(holder: str, position: int) -> None:
        if _in_cached_function():  # a cached function may not draw outside itself; it waits silently
            return
        if position == 0:  # our turn
            waited = time.monotonic() - start[0] if start else 0.0
            status.caption(f"Waited {waited:.0f} s for the model behind {holder}.")
            start.clear()
            return
        if not start:
            start.append(time.monotonic())
        status.info(f"Queued behind {holder} (position {position}): the model runs one analysis at a time.",
                    icon="⏳")

    return on_wait


def declare_page(what: str) -> None:
    """Name this script run to users queued behind it and, wherever it waits for a model
    (any probe call), show the queue in a status line here (:func:`queue_notice`)."""
    from mechscope.probes.locks import declare

    declare(run_label(what), queue_notice())


@contextmanager
def model_turn(model, what: str):
    """Hold the model's lock (:func:`probes.locks.turn`) for the block as ``what``; while
    another run holds it, a status line here says "Queued behind <run> (position n)", then
    how long it waited and behind whom."""
    from mechscope.probes.locks import turn

    with turn(model, run_label(what), on_wait=queue_notice()):
        yield


def _background_after() -> float:
    import os

    try:
        return float(os.environ.get("MECHSCOPE_BACKGROUND_AFTER_S", 20.0))
    except ValueError:
        return 20.0


BACKGROUND_AFTER_S = _background_after()  # runs estimated longer than this (seconds; env override) go to the background


def run_analysis(slot: str, fn, model, params, label: str = "Forward passes", *, background: bool | None = None,
                 **runtime):
    """Run ``fn(model, params, progress=...)`` once per distinct parameters and keep the
    Result in the session (errors shown as one ``st.error`` line; returns None then).

    A run estimated (:func:`estimate`) over :data:`BACKGROUND_AFTER_S` seconds — or any run
    with ``background=True`` — goes to a background job (:mod:`mechscope.sweeps.background`,
    saved in :func:`runs_dir`): the page reruns at once and :func:`stored` shows its
    progress, a Cancel button and, when done, its Result; returns None then. A foreground
    run waits its turn for the model (:func:`model_turn`), saying behind whom."""
    hit = stored(slot, params, model)
    if hit is not None:
        result_box(hit, slot)
        return hit
    if _live_run(memo_key(slot, params, model)) is not None:
        return None  # running, or ended without a result: stored() shows which (and "Run again")
    if background is None:
        seconds = estimate(params, model)
        if seconds is None and _heavy_without_formula(params):
            seconds = float("inf")
        background = not runtime and seconds is not None and seconds > BACKGROUND_AFTER_S
    if background:
        with guard():
            submit_background(slot, params, model)
        rerun_page()
    with guard(), model_turn(model, f"{type(params).__name__.removesuffix('Params') or slot}"):
        result = fn(model, params, progress=st_progress(label), **runtime)
        st.session_state[f"memo_{slot}"] = (memo_key(slot, params, model), result)
        result_box(result, slot)
        return result
    return None


# ---------------------------------------------------------------------------------------
# Background runs: submitted from pages, listed in the sidebar, reopened by a link


DASHBOARD_INDEX = "dashboard.jsonl"  # run id -> page, slot, form widgets (beside the runs' own index)


def runs_dir() -> Path:
    """The background runs' folder: ``$MECHSCOPE_RESULTS/runs`` if that is set, else
    ``mechscope/runs`` in the user's cache (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    import os

    if os.environ.get("MECHSCOPE_RESULTS"):
        return Path(os.environ["MECHSCOPE_RESULTS"]).expanduser() / "runs"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "mechscope" / "runs"


@st.cache_resource(show_spinner=False)
def _live_runs() -> dict:
    """Background runs started by this process: run id -> (memo key, RunHandle)."""
    return {}


def _live_run(key: tuple):
    """The newest background run of this process for memo key ``key``, else None."""
    found = [h for k, h in _live_runs().values() if k == key]
    return max(found, key=lambda h: h.run_id) if found else None


def any_running() -> bool:
    """Whether a background run of this process is running."""
    return any(h.status == "running" for _, h in _live_runs().values())


def live_handle(run_id: str):
    entry = _live_runs().get(run_id)
    return entry[1] if entry is not None else None


def estimate(params, model) -> float | None:
    """Seconds ``params`` should take on ``model`` here (:func:`analyses.catalog.estimate_seconds`),
    None when its analysis has no cost formula."""
    from mechscope.analyses.catalog import estimate_seconds

    try:
        return estimate_seconds(params, model)
    except MechscopeError:
        return None


def fmt_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _heavy_without_formula(params) -> bool:
    from mechscope.analyses.catalog import HEAVY_WITHOUT_FORMULA

    return getattr(params, "kind", None) in HEAVY_WITHOUT_FORMULA


def estimate_line(params, model) -> str | None:
    """"≈ N on this machine (tokens, model calls)[; runs in the background]" or None."""
    from mechscope.analyses.catalog import cost_of

    seconds = estimate(params, model)
    if seconds is None:
        if _heavy_without_formula(params) and BACKGROUND_AFTER_S != float("inf"):
            return "No time estimate for this analysis (it can take minutes); runs in the background"
        return None
    tokens, passes = cost_of(params, model)
    where = "; runs in the background" if seconds > BACKGROUND_AFTER_S else ""
    return f"≈ {fmt_seconds(seconds)} on this machine ({tokens:,} tokens, {passes:,} model calls){where}"


def _form_widgets(params) -> dict:
    """The widget values of the form that drew ``params`` (to reopen the run in its page)."""
    import json

    for fkey, (cls, shown) in (st.session_state.get(FORMS_STATE) or {}).items():
        if cls is type(params) and all(getattr(params, n, object()) == v for n, v in shown.items()):
            out = {}
            for n in shown:
                v = st.session_state.get(f"{fkey}_{n}")
                try:
                    json.dumps(v)
                except (TypeError, ValueError):
                    continue
                out[f"{fkey}_{n}"] = v
            return out
    return {}


def _current_page() -> PageInfo | None:
    """The page whose script is running (the innermost page file on the call stack)."""
    import inspect

    pages = {p.path: p for p in discover_pages()}
    for frame in inspect.stack(context=0):
        page = pages.get(Path(frame.filename).resolve())
        if page is not None:
            return page
    return None


def submit_background(slot: str, params, model):
    """Start ``params``' analysis as a background run (:func:`sweeps.background.submit`) on
    the loaded model; note its page, slot and form widgets so a link reopens it there."""
    import json

    from mechscope.probes.models import model_id
    from mechscope.sweeps.background import submit

    key = memo_key(slot, params, model)
    handle = submit(params.kind, params, model_name=current_model_name(), out_dir=runs_dir(), model=model)
    _live_runs()[handle.run_id] = (key, handle)
    page = _current_page()
    meta = {"run": handle.run_id, "slot": slot, "key": list(key), "model": model_id(model),
            "page": page.slug if page else None, "widgets": _form_widgets(params)}
    with open(runs_dir() / DASHBOARD_INDEX, "a", encoding="utf-8") as f:
        f.write(json.dumps(meta, default=str) + "\n")
    return handle


def dashboard_runs() -> dict:
    """run id -> what the dashboard noted when it submitted the run."""
    import json

    path = runs_dir() / DASHBOARD_INDEX
    out = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
                out[e["run"]] = e
            except (ValueError, KeyError, TypeError):
                continue
    return out


def recent_background_runs(limit: int = 20) -> list[dict]:
    """The runs in :func:`runs_dir` (newest first), with live progress for this process' own
    and the page each opens in."""
    from mechscope.sweeps.background import recent_runs

    runs = recent_runs(runs_dir(), limit=limit)
    meta = dashboard_runs()
    for r in runs:
        h = live_handle(r["run"])
        if h is not None:
            r.update(status=h.status, progress=h.progress, message=h.message)
        r["page"] = (meta.get(r["run"]) or {}).get("page")
    return runs


def run_link(run: dict) -> str:
    """A link that opens a run in its page (``/<page>?run=<id>``), else its saved result."""
    if run.get("page"):
        return f"/{run['page']}?run={run['run']}"
    return f"/?result={run['directory']}"


def open_linked_run() -> None:
    """``?run=<id>`` in the URL: :func:`open_run` (once per session)."""
    rid = st.query_params.get("run")
    if not rid or st.session_state.get("_opened_run") == rid:
        return
    st.session_state["_opened_run"] = rid
    open_run(rid)


def open_run(rid: str, quiet: bool = False) -> None:
    """Set the run's page form to the run's parameters and, for a finished run of an earlier
    process, keep its saved Result as the page's result, so the page shows it as if it had
    just computed it (a run of this process is followed by :func:`stored`)."""
    meta = dashboard_runs().get(rid)
    if meta is None:
        if not quiet:
            st.warning(f"No dashboard run {rid} in {runs_dir()}.")
        return
    # applied by params_form when it draws each widget: state set here for widgets that the
    # current run does not draw can be cleared by Streamlit before the run's page is shown
    st.session_state.setdefault(PENDING_WIDGETS, {}).update(meta.get("widgets") or {})
    if live_handle(rid) is not None:
        return
    from mechscope.sweeps.background import recent_runs

    run = next((r for r in recent_runs(runs_dir(), limit=10_000) if r["run"] == rid), None)
    if run is not None and run["status"] == "done":
        from mechscope.analyses.catalog import load_result

        with guard():
            st.session_state[f"memo_{meta['slot']}"] = (tuple(meta["key"]), load_result(run["directory"]))
    elif run is not None and not quiet:
        st.caption(f"Run {rid} is {run['status']}" + (f": {run['error']}" if run.get("error") else "."))


_ICONS = {"running": "⏳", "done": "✅", "failed": "❌", "cancelled": "⏹", "interrupted": "⚠️"}


def _run_panel_body(run_id: str) -> None:
    h = live_handle(run_id)
    if h is None:
        return
    if h.done():
        rerun_page()  # the whole page: it now shows the result
        return
    st.progress(h.progress, text=f"Background run `{run_id}` ({h.kind}): {h.message}")
    if h.cancelled:
        st.caption("Cancelling: the run stops at its next progress report.")
    elif st.button("Cancel", key=f"bg_cancel_{run_id}", icon=":material/cancel:"):
        h.cancel()
        st.caption("Cancelling: the run stops at its next progress report.")


_run_panel = st.fragment(run_every=1.0)(_run_panel_body)


def _rerun_pending() -> bool:
    """Whether a rerun is already queued for this session (a page the user just chose, say)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    requests = getattr(get_script_run_ctx(), "script_requests", None)
    return getattr(getattr(requests, "_state", None), "name", None) == "RERUN"


def rerun_page() -> None:
    """Rerun this page from the top, unless the user has already asked for a run (another
    page, say): then only stop here. Streamlit (1.67) gives coalesced rerun requests the page
    of the later one, so a rerun requested now would take the user back to this page."""
    if _rerun_pending():
        st.stop()
    else:
        st.rerun()


def run_entry(run: dict, label: str, where=None, key: str = "runs") -> None:
    """A button that opens ``run`` in its page (its form set to the run's parameters:
    :func:`open_run`), or a link to its saved result when no page is noted for it."""
    where = st if where is None else where
    page = next((p for p in discover_pages() if p.slug == run.get("page")), None)
    if page is None:
        where.markdown(f"[{md_escape(label)}]({run_link(run)})", help=run.get("error") or run["run"])
        return
    where.button(label, key=f"{key}_open_{run['run']}", type="tertiary", help=run.get("error") or run["run"],
                 on_click=_request_open, args=(run["run"], f"pages/{page.path.name}"))
    if st.session_state.get(OPEN_REQUEST):
        st.rerun(scope="app")  # out of the fragment: the full run switches page (runs_list)


OPEN_REQUEST = "_open_run_page"
PENDING_WIDGETS = "_pending_widgets"  # widget key -> value a reopened run's form starts at


def _request_open(rid: str, page: str) -> None:
    open_run(rid, quiet=True)
    st.session_state[OPEN_REQUEST] = page


def _runs_list_body(limit: int, key: str) -> None:
    import datetime

    runs = recent_background_runs(limit)
    for r in runs:
        when = datetime.datetime.fromtimestamp(r["submitted"] or 0).strftime("%m-%d %H:%M")
        extra = f" {100 * r.get('progress', 0):.0f}%" if r["status"] == "running" and "progress" in r else ""
        run_entry(r, f"{_ICONS.get(r['status'], '')} {r['kind']} · {when} · {r['status']}{extra}", key=key)


_runs_list_live = st.fragment(run_every=2.0)(_runs_list_body)
_runs_list_still = st.fragment(_runs_list_body)


def runs_list(limit: int = 5, key: str = "runs") -> None:
    """The newest background runs with their status (refreshed while one of this process runs);
    each opens in its page."""
    page = st.session_state.pop(OPEN_REQUEST, None)
    if page:
        st.switch_page(page)
    (_runs_list_live if any_running() else _runs_list_still)(limit, key)


def sidebar_runs(limit: int = 5) -> None:
    """"Recent runs" in the sidebar (nothing when there are none)."""
    from mechscope.sweeps.background import recent_runs

    if not recent_runs(runs_dir(), limit=1):
        return
    with st.sidebar:
        st.subheader("Recent runs")
        runs_list(limit, key="sidebar_runs")


# ---------------------------------------------------------------------------------------
# Forms generated from Params: one widget per simple field, default and help from the field


FORMS_STATE = "_params_forms"  # form key -> (Params class, the values its widgets gave)


@dataclass(frozen=True)
class FieldKind:
    """How a field is drawn: ``bool`` (checkbox), ``int``/``float`` (number input), ``str``
    (text input), ``choice`` (selectbox), ``multi`` (multiselect of a tuple field with
    choices) or ``list`` (a tuple of simple items as comma-separated text). ``optional``:
    the field takes None (an empty input)."""

    kind: str
    optional: bool = False
    options: tuple = ()
    inner: type | None = None


def _split_optional(hint) -> tuple[bool, object]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        return optional, (args[0] if len(args) == 1 else typing.Union[tuple(args)])
    return False, hint


def field_kind(hint, metadata=None, choices=None) -> FieldKind | None:
    """The widget kind for a field annotation (None: no simple widget). ``choices`` (or the
    field metadata's "choices": a tuple/list, or a zero-argument callable returning one)
    turn a field into a selectbox, a tuple field into a multiselect."""
    optional, base = _split_optional(hint)
    if choices is None:
        choices = (metadata or {}).get("choices")
    if callable(choices):
        choices = choices()
    origin = typing.get_origin(base)
    if origin in (tuple, list):
        inner = next((a for a in typing.get_args(base) if a is not Ellipsis), str)
        if choices is not None:
            return FieldKind("multi", optional, tuple(choices), inner)
        return FieldKind("list", optional, inner=inner) if inner in (int, float, str) else None
    if choices is not None:
        return FieldKind("choice", optional, tuple(choices))
    if origin is typing.Literal:
        return FieldKind("choice", optional, typing.get_args(base))
    if base is bool:
        return FieldKind("choice", True, (True, False)) if optional else FieldKind("bool")
    if base in (int, float, str):
        return FieldKind(base.__name__, optional)
    if origin in (typing.Union, types.UnionType) and str in typing.get_args(base):
        return FieldKind("str", optional)  # e.g. a prompt given as text or token ids
    return None


def _none_meaning(help_: str) -> str:
    """What None means, from a help text's "(None: …)" / "(empty: …)"."""
    m = re.search(r"(?:None|empty)\s*[:=]\s*([^);]+)", help_ or "")
    return m.group(1).strip() if m else "none"


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} has no default: pass it in values=")


def default_of(cls, name: str):
    """The default of field ``name`` of the dataclass ``cls`` (for a page's own widgets)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return _default(f)
    raise TypeError(f"{cls.__name__} has no field {name}")


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return ", ".join(map(str, value))
    return "None" if value is None else str(value)


def _widget_value(fk: FieldKind, value):
    """A field value as its widget holds it."""
    if fk.kind == "list":
        return "" if value is None else ", ".join(map(str, value))
    if fk.kind == "multi":
        return list(value or ())
    if fk.kind == "str":
        return "" if value is None else str(value)
    if fk.kind == "int" and value is not None:
        return int(value)
    if fk.kind == "float" and value is not None:
        return float(value)
    return value


def _parse_list(fk: FieldKind, text: str, label: str):
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    if not parts:
        return None if fk.optional else ()
    try:
        return tuple(fk.inner(p) for p in parts)
    except ValueError:
        raise InputError(f"{label}: expected comma-separated {fk.inner.__name__} values, not {text!r}.") from None


def _draw(where, fk: FieldKind, label: str, help_: str, wkey: str):
    """Draw one widget (its value already in the session state) and return the field value."""
    placeholder = _none_meaning(help_) if fk.optional else None
    if fk.kind == "bool":
        return bool(where.checkbox(label, key=wkey, help=help_))
    if fk.kind == "int":
        v = where.number_input(label, min_value=0, step=1, key=wkey, help=help_, placeholder=placeholder,
                               **({"value": None} if fk.optional else {}))
        return None if v is None else int(v)
    if fk.kind == "float":
        v = where.number_input(label, step=0.01, format="%g", key=wkey, help=help_, placeholder=placeholder,
                               **({"value": None} if fk.optional else {}))
        return None if v is None else float(v)
    if fk.kind == "str":
        v = where.text_input(label, key=wkey, help=help_, placeholder=placeholder)
        return (v or None) if fk.optional else v
    if fk.kind == "choice":
        options = list(fk.options)
        if fk.optional and None not in options:
            options = [None] + options
        return where.selectbox(label, options, key=wkey, help=help_,
                               format_func=lambda o: f"None ({_none_meaning(help_)})" if o is None else str(o))
    if fk.kind == "multi":
        return tuple(where.multiselect(label, list(fk.options), key=wkey, help=help_))
    return _parse_list(fk, where.text_input(label, key=wkey, help=help_ + " (comma-separated)",
                                            placeholder=placeholder), label)


PRESETS_STATE = "_params_presets"  # form key -> the page preset its widgets started from


def params_form(cls, *, key: str, fields: typing.Sequence[str] | None = None, skip: typing.Iterable[str] = (),
                values: dict | None = None, choices: dict | None = None, labels: dict | None = None,
                columns: int = 4, where=None, preset: dict | None = None):
    """Widgets for the parameters of ``cls`` (a dataclass, normally an analysis' Params) and
    the instance they give.

    One widget per simple field — bool: checkbox; int/float: number input (an optional one
    may be left empty for None, its placeholder saying what None means); Literal or choices:
    selectbox; str: text input; tuple of simple items: comma-separated text (with choices: a
    multiselect). Each widget starts at the field's default and shows its metadata help, so
    a page never restates a default. ``fields``: the fields to show, in order (default: every
    simple one); ``skip``: fields not shown; ``values``: fields set by the page (not shown);
    ``choices``: field → options (or a callable) where the field's metadata gives none;
    ``labels``: field → label (default: the field name); ``preset``: field → the value its
    widget starts at instead of the default (a page's quick setting; :func:`reference_button`
    restores the defaults). Widget keys are ``f"{key}_{field}"``.
    Bad values (a Params' own checks, unparsable lists) are one ``st.error`` line.
    """
    where = st if where is None else where
    values, choices, labels = dict(values or {}), dict(choices or {}), dict(labels or {})
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = (set(fields or ()) | set(skip) | set(values) | set(choices) | set(labels)) - set(by_name)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    skip = set(skip) | set(values)
    kinds = {}
    for name in (fields if fields is not None else by_name):
        if name in skip:
            continue
        f = by_name[name]
        fk = field_kind(hints[name], f.metadata, choices.get(name))
        if fk is None:
            if fields is not None:
                raise TypeError(f"{cls.__name__}.{name} ({hints[name]}) has no simple widget: pass it in values=")
            continue
        kinds[name] = fk
    shown = {}
    slots = _grid(where, len(kinds), columns)
    with guard():
        for slot, (name, fk) in zip(slots, kinds.items()):
            f = by_name[name]
            default = _default(f)
            help_ = f.metadata.get("help", "")
            help_ = f"{help_} (default {_shown(default)})".strip()
            if preset and name in preset:
                default = preset[name]
            wkey = f"{key}_{name}"
            if name in ("layer", "head") and fk.kind == "int" and wkey not in st.session_state:
                default = url_index(name, default)
            if fk.kind in ("choice", "multi"):  # a default outside the choices stays choosable
                extra = [d for d in ((default or ()) if fk.kind == "multi" else (default,))
                         if d is not None and d not in fk.options]
                fk = dataclasses.replace(fk, options=tuple(extra) + tuple(fk.options))
            pending = st.session_state.get(PENDING_WIDGETS)
            if pending and wkey in pending:
                st.session_state[wkey] = pending.pop(wkey)
            elif wkey not in st.session_state:
                st.session_state[wkey] = _widget_value(fk, default)
            shown[name] = _draw(slot, fk, labels.get(name, name), help_, wkey)
            if name in ("layer", "head") and fk.kind == "int":
                set_url(name, shown[name])
        st.session_state.setdefault(FORMS_STATE, {})[key] = (cls, dict(shown))
        st.session_state.setdefault(PRESETS_STATE, {})[key] = dict(preset or {})
        params = cls(**shown, **values)
    _estimate_caption(params, where)
    return params


def _set_form(cls, key: str, fields, values: dict) -> None:
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for name in fields:
        fk = field_kind(hints[name], by_name[name].metadata)
        if fk is not None:
            st.session_state[f"{key}_{name}"] = _widget_value(fk, values[name])


def reference_button(cls, *, key: str, fields: typing.Sequence[str], model, label: str = "Reference defaults",
                     where=None) -> None:
    """A button that sets the form ``key``'s ``fields`` to the Params defaults (the paper's
    setting), labelled with their estimated time on this machine."""
    where = st if where is None else where
    ref = cls()
    seconds = estimate(ref, model)
    text = label + (f" (≈ {fmt_seconds(seconds)} on this machine)" if seconds is not None else "")
    where.button(text, key=f"{key}_reference", on_click=_set_form,
                 args=(cls, key, tuple(fields), {n: getattr(ref, n) for n in fields}),
                 help="sets the form to the analysis' reference defaults; press the run button to run them")


def _estimate_caption(params, where) -> None:
    """Under a form whose analysis has a cost formula: its estimated time here."""
    from mechscope.analyses.catalog import COSTS, import_all

    import_all()
    if getattr(params, "kind", None) not in COSTS:
        return
    try:
        model = _cached_model(current_model_name()).model
    except Exception:  # no model loaded (the page stops elsewhere)
        return
    line = estimate_line(params, model)
    if line:
        where.caption(line)


def _grid(where, n: int, columns: int) -> list:
    """``n`` places in rows of ``columns`` (``where`` itself when one column)."""
    if columns <= 1:
        return [where] * n
    out = []
    for start in range(0, n, columns):
        out.extend(where.columns(columns)[: min(columns, n - start)])
    return out


# ---------------------------------------------------------------------------------------
# Export and share: tables, figures and saved results, each with its downloads


_DOWNLOAD = dict(type="tertiary", icon=":material/download:", on_click="ignore")  # a download never reruns the page


def _file_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", str(name)).strip("_") or "table"


def table_bytes(df, fmt: str) -> bytes:
    """``df`` as a CSV or Parquet file's bytes (object columns as text for Parquet)."""
    import io

    import pandas as pd

    if not isinstance(df.index, pd.RangeIndex):  # a labelled index (e.g. a pivot's) is data too
        df = df.reset_index()
    if fmt == "csv":
        return df.to_csv(index=False).encode("utf-8")
    buf = io.BytesIO()
    try:
        df.to_parquet(buf, index=False)
    except Exception:  # mixed-type object columns: write them as text
        df.astype({c: str for c in df.columns if df[c].dtype == object}).to_parquet(buf, index=False)
    return buf.getvalue()


def number_formats(df) -> dict:
    """``column_config`` giving float columns 6 significant digits (``%.6g``: 1.2e-50, not
    fifty leading zeros)."""
    import pandas as pd

    return {c: st.column_config.NumberColumn(format="%.6g") for c in df.columns
            if pd.api.types.is_float_dtype(df[c])}


def show_table(df, name: str, *, key: str | None = None, static: bool = False, where=None, **kwargs) -> None:
    """``st.dataframe(df)`` (``static``: ``st.table``, for short tables read as text) with CSV
    and Parquet downloads (``name``: the file name's stem); floats shown to 6 significant
    digits unless ``column_config`` says otherwise. ``where``: a column or container."""
    where = st if where is None else where
    key = key or f"tbl_{_file_name(name)}"
    data = getattr(df, "data", df)  # a Styler downloads its frame
    if static:
        where.table(df, **kwargs)
    else:
        if not hasattr(df, "data"):
            kwargs["column_config"] = {**number_formats(df), **(kwargs.get("column_config") or {})}
        where.dataframe(df, key=key, **kwargs)
    row = where.container(horizontal=True, gap="small")
    row.download_button("CSV", table_bytes(data, "csv"), f"{_file_name(name)}.csv", "text/csv", key=f"{key}_csv",
                        **_DOWNLOAD)
    row.download_button("Parquet", table_bytes(data, "parquet"), f"{_file_name(name)}.parquet",
                        "application/octet-stream", key=f"{key}_parquet", **_DOWNLOAD)


def kaleido_available() -> bool:
    """kaleido (PNG/SVG export) installed, and a Chrome or Chromium for it to drive."""
    import importlib.util
    import os
    import shutil

    if importlib.util.find_spec("kaleido") is None:
        return False
    return bool(os.environ.get("BROWSER_PATH")) or any(
        shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"))


def _nice_log_ticks(lo: float, hi: float) -> list[int]:
    """Integer ticks within [lo, hi]: every integer over a short range, else 1, 2, 5, 10, 20,
    50, … plus both ends."""
    lo, hi = max(1, int(round(lo))), max(1, int(round(hi)))
    if hi - lo <= 10:
        return list(range(lo, hi + 1))
    ticks = {lo, hi}
    p = 1
    while p <= hi:
        ticks.update(m * p for m in (1, 2, 5) if lo <= m * p <= hi)
        p *= 10
    return sorted(ticks)


def tidy_figure(fig):
    """Readable in a dashboard column: rank axes get integer ticks (never "5, 6, 6, 7"),
    legends sit in a row above the plot (never clipped at a narrow column's edge) and
    stacked subplots get room for their titles. Returns the figure (changed in place)."""
    import numpy as np

    layout = fig.layout
    for name in [n for n in layout if n.startswith("yaxis") or n.startswith("xaxis")]:
        axis = layout[name]
        title = (axis.title.text or "") if axis.title is not None else ""
        if "rank" not in title.lower() or axis.tickvals is not None:
            continue
        ref = name.replace("axis", "")  # yaxis2 -> y2
        vals = [np.asarray(t[ref[0]], dtype=float) for t in fig.data
                if (getattr(t, f"{ref[0]}axis", None) or ref[0]) == ref and getattr(t, ref[0], None) is not None]
        vals = np.concatenate([v.ravel() for v in vals]) if vals else np.array([])
        vals = vals[np.isfinite(vals)]
        if not len(vals):
            continue
        if axis.type == "log":
            ticks = _nice_log_ticks(vals.min(), vals.max())
            axis.update(tickvals=ticks, ticktext=[str(t) for t in ticks])
        else:
            axis.update(tickformat="d", dtick=max(1, int(np.ceil((vals.max() - vals.min()) / 8))))
    entries = [t for t in fig.data if t.showlegend is not False and t.name]
    if layout.showlegend is not False and len(entries) > 1 and layout.legend.orientation is None:
        layout.legend.update(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0)
        layout.margin.update(t=max(layout.margin.t or 0, 90))
    n_rows = len([n for n in layout if n.startswith("yaxis")])
    if n_rows > 1 and layout.grid.rows is None and all(layout[n].overlaying is None for n in layout if n.startswith("yaxis")):
        layout.height = max(layout.height or 0, 340 * n_rows)
    return fig


def _figure_file(fig, fmt: str):
    """A callable giving ``fig`` as an offline HTML page (plotly.js inlined) or a PNG/SVG
    image (kaleido): run only when its download button is clicked."""
    if fmt == "html":
        return lambda: fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8")
    return lambda: fig.to_image(format=fmt)


def show_figure(fig, name: str, *, key: str | None = None, where=None, **kwargs) -> None:
    """``st.plotly_chart(fig)`` (tidied: :func:`tidy_figure`) with downloads: offline HTML
    always (plotly.js inlined), PNG and SVG when kaleido is installed (else one note per
    session). The files are made when their button is clicked (an image takes kaleido
    seconds; a page of several figures would pay for all on every rerun). ``where``: a
    column or container."""
    where = st if where is None else where
    key = key or f"fig_{_file_name(name)}"
    fig = tidy_figure(fig)
    where.plotly_chart(fig, key=key, **kwargs)
    stem = _file_name(name)
    row = where.container(horizontal=True, gap="small")
    row.download_button("HTML", _figure_file(fig, "html"), f"{stem}.html", "text/html", key=f"{key}_html",
                        help="standalone, works offline", **_DOWNLOAD)
    if kaleido_available():
        for fmt, mime in (("png", "image/png"), ("svg", "image/svg+xml")):
            row.download_button(fmt.upper(), _figure_file(fig, fmt), f"{stem}.{fmt}", mime, key=f"{key}_{fmt}",
                                **_DOWNLOAD)
    elif not st.session_state.get("_kaleido_note"):
        st.session_state["_kaleido_note"] = True
        row.caption("PNG/SVG downloads need kaleido and Chrome or Chromium (pip install 'mechscope[export]').")


def results_dir() -> Path:
    """Where the dashboard saves results: ``$MECHSCOPE_RESULTS`` or ``~/mechscope-results``."""
    import os

    return Path(os.environ.get("MECHSCOPE_RESULTS") or "~/mechscope-results").expanduser()


def recent_results(limit: int = 10) -> list[tuple[Path, str, object]]:
    """(folder, analysis kind, modified time) of the newest saved results in :func:`results_dir`."""
    import datetime
    import json

    root = results_dir()
    if not root.is_dir():
        return []
    out = []
    for meta in root.glob("*/result.json"):
        try:
            kind = json.loads(meta.read_text()).get("type", "?")
        except (OSError, ValueError):
            continue
        out.append((meta.parent, str(kind), datetime.datetime.fromtimestamp(meta.stat().st_mtime)))
    return sorted(out, key=lambda r: r[2], reverse=True)[:limit]


def result_zip(result, name: str) -> bytes:
    """A saved result (with HTML figures and a CSV table) as one zip file's bytes."""
    import io
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = result.save(Path(tmp) / _file_name(name), html=True)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    zf.write(f, f"{folder.name}/{f.relative_to(folder)}")
        return buf.getvalue()


def result_box(result, name: str) -> None:
    """Save a result under :func:`results_dir` (a link to it then reopens it) or download
    it as a zip."""
    import datetime

    key = _file_name(name)
    with st.expander("Save / share this result"):
        if st.button(f"Save to {results_dir()}", key=f"save_{key}"):
            with guard():
                stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
                folder = result.save(results_dir() / f"{key}-{stamp}", html=True)
                st.session_state[f"saved_{key}"] = str(folder)
        if st.session_state.get(f"saved_{key}"):
            where = st.session_state[f"saved_{key}"]
            st.markdown(f"Saved: `{where}` — [link that reopens it](?result={where})")
        st.download_button("Download zip", lambda: result_zip(result, name), f"{key}.zip", "application/zip",
                           key=f"zipdl_{key}", help="the saved folder, zipped when clicked")


def open_saved_result() -> bool:
    """If the URL names ``?result=<folder>``, draw that saved result (its table and figures,
    with downloads) and return True."""
    where = st.query_params.get("result")
    if not where:
        return False
    from mechscope.analyses.catalog import load_result

    with guard():
        result = load_result(where)
        st.title(f"Saved result: {Path(where).name}")
        st.caption(f"{type(result).__name__} from `{where}`; model {result.model_id}")
        with st.expander("Parameters"):
            st.code(repr(result.params))
        try:
            show_table(result.to_frame(), Path(where).name)
        except NotImplementedError:
            pass
        for name, fig in result.figures().items():
            show_figure(fig, f"{Path(where).name}-{name}")
        return True
    return True
