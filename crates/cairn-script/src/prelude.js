// The script context (SPEC §14), built once per activation before the module
// runs. Every effect goes through `native(kind, json)`, which the runner
// answers from the journal or records as a new call; this file only turns its
// answers into values and promises. It evaluates to the runner's handle.
(function (native, processId, args) {
  "use strict";
  const pending = new Map();
  let outcome = null;

  function fail(err) {
    const e = new Error(err.message);
    e.class = err.class;
    e.code = err.code;
    return e;
  }

  function call(kind, payload) {
    const answer = JSON.parse(native(kind, JSON.stringify(payload === undefined ? {} : payload)));
    if ("sync" in answer) return answer.sync;
    if ("value" in answer) return Promise.resolve(answer.value);
    if ("error" in answer) return Promise.reject(fail(answer.error));
    return new Promise((resolve, reject) => pending.set(answer.pending, { resolve, reject }));
  }

  function text(v) {
    if (typeof v === "string") return v;
    try {
      const s = JSON.stringify(v);
      return s === undefined ? String(v) : s;
    } catch (_) {
      return String(v);
    }
  }

  const ctx = Object.freeze({
    processId,
    args,
    get cancelled() {
      return native("cancelled", "{}") === "true";
    },
    tool: (name, toolArgs, opts) =>
      call("tool", { name, args: toolArgs === undefined ? null : toolArgs, disposition: (opts && opts.disposition) || "rerunnable" }),
    start: (request) => call("start", { request }),
    wait: (id) => call("wait", { id }),
    turn: (session, input, outputContract) =>
      call("turn", { session, input: input === undefined ? null : input, output_contract: outputContract === undefined ? null : outputContract }),
    sleep: (ms) => call("sleep", { ms }),
    waitSignal: (name, opts) => {
      const p = { name };
      if (opts && opts.timeoutMs !== undefined) p.timeout_ms = opts.timeoutMs;
      return call("wait_signal", p);
    },
    emit: (type, payload) => call("emit", { type, payload: payload === undefined ? null : payload }),
    now: () => call("now"),
    random: () => call("random"),
    uuid: () => call("uuid"),
    // Resolves at once; rejects (payload_too_large) for a line too large to journal.
    log: (...parts) => {
      const answer = JSON.parse(native("log", JSON.stringify({ message: parts.map(text).join(" ") })));
      return "error" in answer ? Promise.reject(fail(answer.error)) : Promise.resolve();
    },
  });

  // The only clock and the only randomness are the journaled ones: `Date.now()`,
  // `new Date()` and `Date()` each read `ctx.now()`; a Date of given parts is
  // the engine's own.
  const EngineDate = Date;
  function JournaledDate(...parts) {
    if (new.target === undefined) return new EngineDate(ctx.now()).toString();
    return Reflect.construct(EngineDate, parts.length === 0 ? [ctx.now()] : parts, new.target);
  }
  Object.defineProperty(JournaledDate, "name", { value: "Date" });
  Object.defineProperty(JournaledDate, "length", { value: 7 });
  JournaledDate.prototype = EngineDate.prototype;
  Object.defineProperty(EngineDate.prototype, "constructor", { value: JournaledDate, writable: true, configurable: true });
  JournaledDate.now = () => ctx.now();
  JournaledDate.parse = EngineDate.parse;
  JournaledDate.UTC = EngineDate.UTC;
  globalThis.Date = JournaledDate;
  // The engine's monotonic clock would differ on every replay.
  delete globalThis.performance;
  Math.random = () => ctx.random();

  function describe(e) {
    if (e !== null && typeof e === "object") {
      return {
        code: typeof e.code === "string" && e.code.length > 0 ? e.code : "uncaught",
        message: e.message === undefined ? text(e) : String(e.message),
        stack: e.stack === undefined ? null : String(e.stack),
      };
    }
    return { code: "uncaught", message: text(e), stack: null };
  }

  return {
    describe: (e) => JSON.stringify(describe(e)),
    exportsOf: (ns) => JSON.stringify(Object.keys(ns).filter((k) => typeof ns[k] === "function").sort()),
    start(ns, name) {
      let p;
      try {
        p = Promise.resolve(ns[name](ctx, args));
      } catch (e) {
        p = Promise.reject(e);
      }
      p.then(
        (v) => {
          const invalid = (why) =>
            JSON.stringify({ err: { code: "invalid_result", message: "the returned value is not JSON: " + why, stack: null } });
          try {
            const json = v === undefined ? "null" : JSON.stringify(v);
            // A function or a Symbol (or a toJSON that answers one) has no JSON.
            outcome = json === undefined ? invalid("a " + typeof v) : '{"ok":' + json + "}";
          } catch (e) {
            outcome = invalid(text(e.message));
          }
        },
        (e) => {
          outcome = JSON.stringify({ err: describe(e) });
        }
      );
    },
    outcome: () => outcome,
    deliver(n, json) {
      const slot = pending.get(n);
      if (!slot) return;
      pending.delete(n);
      const answer = JSON.parse(json);
      if ("error" in answer) slot.reject(fail(answer.error));
      else slot.resolve(answer.value);
    },
  };
})
