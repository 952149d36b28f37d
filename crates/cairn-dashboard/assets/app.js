// cairn dashboard: a few lines on top of htmx. Nothing here asks the server
// for anything; live updates come from the server over SSE.
(function () {
  "use strict";
  // Refused actions answer 4xx with the server's error as a fragment: swap it
  // in like a success so the page shows it verbatim.
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "[45]..", swap: true, error: true },
  ];

  function relative(ms, now) {
    var d = Math.abs(now - ms) / 1000, s;
    if (d < 60) s = Math.floor(d) + " s";
    else if (d < 3600) s = Math.floor(d / 60) + " min";
    else if (d < 86400) s = Math.floor(d / 3600) + " h";
    else s = Math.floor(d / 86400) + " d";
    return ms > now ? "in " + s : s + " ago";
  }
  // Keep relative times current, computed locally from each element's own time.
  setInterval(function () {
    var now = Date.now();
    document.querySelectorAll("time[data-ms]").forEach(function (t) {
      t.textContent = relative(Number(t.dataset.ms), now);
    });
  }, 10000);

  // "/" jumps to the first filter, as in most tools people use daily.
  document.addEventListener("keydown", function (e) {
    if (e.key !== "/" || e.ctrlKey || e.metaKey || e.altKey) return;
    var tag = (document.activeElement && document.activeElement.tagName) || "";
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") return;
    var first = document.querySelector("form.filters select, form.filters input");
    if (first) { e.preventDefault(); first.focus(); }
  });

  // A timeline stream opened afresh (the browser gives up on one answered
  // with an error, a proxy's 502 say, and the stream is opened again from
  // the first event) appends nothing the timeline already shows.
  document.addEventListener("htmx:sseBeforeMessage", function (e) {
    var m = e.detail;
    // The stream's login lapsed: log in again, and come back here.
    if (m && m.type === "login") {
      e.preventDefault();
      window.location.assign("/ui/login?next=" + encodeURIComponent(location.pathname + location.search + location.hash));
      return;
    }
    if (m && m.type === "timeline" && m.lastEventId &&
        (document.getElementById("ev-" + m.lastEventId) || Number(m.lastEventId) <= trimmedUpTo)) {
      e.preventDefault();
    }
  });

  // A live timeline shown without its earlier events (`data-keep`, any page
  // but `?all=true`) keeps that many as more arrive, dropping the oldest: a
  // tab left open on a chatty run would otherwise grow without end. The
  // notice above it says how many are left out, as the server's does, and
  // the events dropped are not appended again by a stream opened afresh
  // from the first one.
  var trimmedUpTo = 0;
  document.addEventListener("DOMContentLoaded", function () {
    var timeline = document.getElementById("timeline");
    var keep = timeline && Number(timeline.dataset.keep);
    if (!keep) return;
    new MutationObserver(function () {
      var dropped = false;
      while (timeline.children.length > keep) {
        var first = timeline.firstElementChild;
        trimmedUpTo = Math.max(trimmedUpTo, Number(first.dataset.seq) || 0);
        timeline.removeChild(first);
        dropped = true;
      }
      if (dropped) leftOut(timeline, trimmedUpTo);
    }).observe(timeline, { childList: true });
  });

  // A link to one event (`#ev-N`, a wake's) lands on it once the stream has
  // brought it: the timeline is empty when the page loads. One to an event
  // the page leaves out (`data-left-out`: the earliest events not shown)
  // goes to the timeline from it (`?from=N`), as a wake's link does.
  document.addEventListener("DOMContentLoaded", function () {
    var timeline = document.getElementById("timeline");
    var target = /^#ev-\d+$/.test(location.hash) && location.hash.slice(1);
    if (!timeline || !target) return;
    var seq = Number(target.slice(3));
    if (seq > 0 && seq <= Number(timeline.dataset.leftOut || 0)) {
      location.replace(location.pathname + "?from=" + seq + "#" + target);
      return;
    }
    var watch = new MutationObserver(function () {
      var event = document.getElementById(target);
      if (!event) return;
      watch.disconnect();
      event.classList.add("linked");
      event.scrollIntoView({ block: "center" });
    });
    watch.observe(timeline, { childList: true });
  });

  // Say (again) that the earliest `n` events are left out, with the link to
  // the whole timeline.
  function leftOut(timeline, n) {
    var box = timeline.parentNode;
    var notice = box.querySelector("p.hint.more");
    if (!notice) {
      notice = document.createElement("p");
      notice.className = "hint more";
      box.insertBefore(notice, timeline);
    }
    notice.textContent = "The earliest " + n + " events are left out. ";
    var all = document.createElement("a");
    all.href = location.pathname + "?all=true";
    all.textContent = "Show them all";
    notice.appendChild(all);
  }

  // A random UUID (v4). `crypto.randomUUID` exists only in secure contexts
  // (HTTPS, localhost); a page served over plain HTTP to another host has
  // `crypto.getRandomValues` alone, which is enough.
  function newUuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    var b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  // A hidden tab holds no live stream. Over HTTP/1.1 a browser opens at most
  // six connections to one server, and each list or process page holds one:
  // with six such tabs open, a seventh page never loaded. A hidden tab's
  // streams close; shown again, each element's stream is set up afresh, as
  // when the page was processed (not through the extension's reconnect after
  // an error, whose wait doubles each time and which logs an error), a
  // timeline from its last event, and the record panel is read again (a
  // lease renewed meanwhile appends no event).
  var sources = [];
  var create = htmx.createEventSource;
  htmx.createEventSource = function (url) {
    var source = create(url);
    source.cairnUrl = url;
    sources.push(source);
    // A tab opened in the background opens its streams once shown.
    if (document.hidden) pause(source);
    return source;
  };
  function pause(source) {
    if (source.readyState === EventSource.CLOSED) return;
    source.close();
    source.cairnPaused = true;
    setLive("paused");
  }
  var BOUND = "[sse-swap], [data-sse-swap], [hx-trigger], [data-hx-trigger]";
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      sources.forEach(pause);
      return;
    }
    var paused = sources.filter(function (s) { return s.cairnPaused; });
    sources = sources.filter(function (s) { return s.readyState !== EventSource.CLOSED; });
    var timeline = document.getElementById("timeline");
    var last = timeline && timeline.lastElementChild;
    document.querySelectorAll("[sse-connect]").forEach(function (elt) {
      var url = elt.getAttribute("sse-connect");
      if (!paused.some(function (s) { return s.cairnUrl === url; })) return;
      var next = new URL(url, location.href);
      if (last && last.dataset.seq && next.searchParams.has("after")) {
        next.searchParams.set("after", last.dataset.seq);
        elt.setAttribute("sse-connect", next.pathname + next.search);
      }
      // The extension sets up a stream for an element it processed, and
      // binds the elements under it that listen to it.
      htmx.trigger(elt, "htmx:afterProcessNode");
      elt.querySelectorAll(BOUND).forEach(function (bound) {
        htmx.trigger(bound, "htmx:afterProcessNode");
      });
    });
    paused.forEach(function (s) { s.cairnPaused = false; });
    var record = document.getElementById("record");
    if (record && paused.length) htmx.trigger(record, "sse:record");
  });

  // The signal form proposes the signal the process waits for. The record
  // panel re-renders as the process moves on, saying what it waits for now
  // (`data-signal`): the proposal follows, unless a name was typed in, so
  // the form does not offer a signal nobody waits for any more.
  document.addEventListener("htmx:afterSwap", function (e) {
    var record = e.detail.target;
    if (!record || record.id !== "record") return;
    var summary = record.querySelector(".summary[data-signal]");
    var name = document.querySelector("#signal-form input[name=name]");
    if (!summary || !name) return;
    var next = summary.dataset.signal;
    if (name.value === (name.dataset.proposed || "")) name.value = next;
    name.dataset.proposed = next;
  });

  // Sending a signal names the signal as the form holds it now. Completing
  // ends a process for good: the question names the outcome's type as the
  // form holds it now.
  document.addEventListener("htmx:confirm", function (e) {
    var form = e.detail.elt;
    if (form && form.id === "signal-form" && e.detail.question) {
      var signal = form.querySelector("input[name=name]").value;
      e.preventDefault();
      if (window.confirm("Send signal \u201c" + signal + "\u201d to process \u201c" + form.dataset.process + "\u201d?")) {
        e.detail.issueRequest(true);
      }
      return;
    }
    if (!form || form.id !== "complete-form" || !e.detail.question) return;
    var type = null;
    try {
      var outcome = JSON.parse(form.querySelector("textarea[name=outcome]").value);
      if (outcome && typeof outcome.type === "string") type = outcome.type;
    } catch (_) { /* the server says what is wrong with it */ }
    if (!type) return;
    e.preventDefault();
    if (window.confirm("Complete this process with an outcome of type \u201c" + type + "\u201d? It ends the process for good.")) {
      e.detail.issueRequest(true);
    }
  });

  // Where a page says how a request went: the request's own target when it
  // is such a place (`aria-live`, as `#action-result`), else the page's.
  function resultBox(target) {
    if (target && target.hasAttribute("aria-live")) return target;
    return document.querySelector("main [aria-live]");
  }
  // An error as the server's fragments show one (`pages::error_fragment`):
  // its code and message, or what went wrong in words (`lead`).
  function errorNote(code, message, lead) {
    var note = document.createElement("div");
    note.className = "result err";
    note.setAttribute("role", "alert");
    var m = document.createElement("span");
    m.className = "message";
    m.textContent = message;
    if (lead) {
      note.append(lead + ": ", m);
      return note;
    }
    var c = document.createElement("code");
    c.className = "code";
    c.textContent = code;
    note.append(c, ": ", m);
    return note;
  }

  // A request that got no answer (the server down, the network gone) says
  // so where its answer would have shown, not only in the console. A live
  // fragment's re-read (a GET) is left to the live indicator.
  document.addEventListener("htmx:sendError", function (e) {
    var config = e.detail.requestConfig || {};
    if ((config.verb || "get").toLowerCase() === "get") return;
    var note = errorNote(null, "no answer to " + config.verb.toUpperCase() + " " + (config.path || "") +
      ". It may not have been carried out: look again once the server is back.", "cannot reach the server");
    var box = resultBox(e.detail.target);
    if (box) {
      box.replaceChildren(note);
      return;
    }
    var main = document.querySelector("main");
    var old = document.getElementById("unreachable");
    if (old) old.remove();
    note.id = "unreachable";
    if (main) main.prepend(note);
  });

  // An error answered before the dashboard's handlers ran (the server's
  // body limit, say) is the API's JSON, or plain text: shown as the
  // dashboard shows its own errors, not as raw text in the page, and where
  // the page says how a request went.
  document.addEventListener("htmx:beforeSwap", function (e) {
    var xhr = e.detail.xhr;
    if (!e.detail.isError || !xhr) return;
    var kind = (xhr.getResponseHeader("content-type") || "").toLowerCase();
    if (kind.indexOf("text/html") === 0) return;
    var code = "error " + xhr.status, message = (xhr.responseText || "").trim() || xhr.statusText;
    if (kind.indexOf("json") >= 0) {
      try {
        var error = JSON.parse(xhr.responseText).error;
        if (error && typeof error.message === "string") {
          code = String(error.code || code);
          message = error.message;
        }
      } catch (_) { /* shown as the text it is */ }
    }
    // A live fragment's re-read shows it in its place, as the dashboard's
    // own errors; an action's shows where the page says how actions went.
    var verb = ((e.detail.requestConfig || {}).verb || "get").toLowerCase();
    var box = verb === "get" ? null : resultBox(e.detail.target);
    if (box) {
      e.detail.target = box;
      e.detail.swapOverride = "innerHTML";
    }
    e.detail.shouldSwap = true;
    e.detail.serverResponse = errorNote(code, message).outerHTML;
  });

  // A new signal id after each signal sent, so the next one is not a repeat.
  document.addEventListener("htmx:afterRequest", function (e) {
    var form = e.detail.elt;
    if (form && form.id === "signal-form" && e.detail.successful) {
      var id = form.querySelector("input[name=signal_id]");
      if (id) id.value = newUuid();
    }
  });

  // Marks the page with the state of its live stream (`data-live`: open,
  // reconnecting, paused while the tab is hidden, ended; tests wait on it), and
  // says it in the header: a dot while live, "reconnecting…" once the stream is lost.
  var LIVE_STATES = {
    open: ["live", "Live: changes show as they happen."],
    reconnecting: ["reconnecting\u2026", "The live connection to the server is lost; the page tries again by itself. What it shows may be out of date."],
    paused: ["paused", "Paused while the tab is hidden."],
    ended: ["ended", "The process ended (or is no longer visible): nothing here changes any more."],
  };
  function setLive(state) {
    document.body.dataset.live = state;
    var shown = document.getElementById("live-state");
    if (!shown) return;
    shown.hidden = false;
    shown.textContent = LIVE_STATES[state][0];
    shown.title = LIVE_STATES[state][1];
  }
  document.addEventListener("htmx:sseOpen", function () {
    setLive("open");
  });
  document.addEventListener("htmx:sseError", function () {
    setLive("reconnecting");
  });
  // The server ends a process page's stream (`sse-close`) once nothing more
  // can change: the header stops saying "live".
  document.addEventListener("htmx:sseClose", function (e) {
    if (e.detail && e.detail.type === "message") setLive("ended");
  });
})();
