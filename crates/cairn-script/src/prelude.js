// The script context (SPEC §14), built once per activation before the module
// runs. Every effect goes through `native(kind, json)`, which the runner
// answers from the journal or records as a new call; this file only turns its
// answers into values and promises. It evaluates to the runner's handle.
(function (native, processId, args) {
  "use strict";
  const pending = new Map();
  let outcome = null;
  // The engine's own, whatever a script later makes of the global `Error`.
  const EngineError = Error;
  // The engine's own JSON, whatever a script later makes of the global
  // `JSON`: a script that replaced them had its own bug reported as the
  // engine's, or a call it made read back wrong.
  const stringify = JSON.stringify;
  const parse = JSON.parse;
  // Where a stack frame of this prelude points (QuickJS names it so).
  const PRELUDE_FRAME = "(eval_script:";

  // A stack frame's function is not the script's to have (V8 answers
  // `undefined` for strict code too): a frame of the engine's own `Date`,
  // reached through a `valueOf` it calls, would hand out a clock and a time
  // zone no journal records, and a frame of this prelude its internals.
  (function () {
    const prepare = EngineError.prepareStackTrace;
    let sites;
    try {
      EngineError.prepareStackTrace = (_, s) => s;
      sites = new EngineError().stack;
    } finally {
      EngineError.prepareStackTrace = prepare;
    }
    const site = Array.isArray(sites) ? sites[0] : undefined;
    if (site === undefined) throw new EngineError("the prelude found no stack frame to guard");
    Object.defineProperty(Object.getPrototypeOf(site), "getFunction", {
      value: function getFunction() {
        return undefined;
      },
      writable: false,
      enumerable: false,
      configurable: false,
    });
  })();

  // An engine Error without the script's `Error.prepareStackTrace`: a
  // context call runs no script code, and its stack is in the engine's own
  // format (the one a failure's `raw.stack` holds).
  function engineError(message) {
    let prepare;
    try {
      prepare = EngineError.prepareStackTrace;
    } catch (_) {
      prepare = undefined;
    }
    if (typeof prepare !== "function") return new EngineError(message);
    try {
      EngineError.prepareStackTrace = undefined;
      return new EngineError(message);
    } finally {
      EngineError.prepareStackTrace = prepare;
    }
  }

  // The stack where a call is made: the script's frames of the call (its
  // await site), which an answer delivered later, from no frame of the
  // script, has nowhere else. Not journaled: a replay runs the same code and
  // captures the same stack.
  function callSite() {
    try {
      const stack = engineError().stack;
      return typeof stack === "string" ? stack : undefined;
    } catch (_) {
      return undefined;
    }
  }

  // A call's rejection: an Error with the answer's `class`, `code` and
  // `message`, for a child's failure its `process_id`, and the stack of the
  // call (`site`, else where it is made now) without this prelude's frames.
  function fail(err, site) {
    const e = engineError(err.message);
    e.class = err.class;
    e.code = err.code;
    if (typeof err.process_id === "string") e.process_id = err.process_id;
    const stack = site === undefined ? callSite() : site;
    if (stack !== undefined) {
      const own = stack
        .split("\n")
        .filter((l) => l.trim() !== "" && !l.includes(PRELUDE_FRAME))
        .map((l) => l + "\n")
        .join("");
      Object.defineProperty(e, "stack", { value: own, writable: true, configurable: true });
    }
    return e;
  }

  // The clock and randomness are answered at once (`Date.now()` and
  // `Math.random()` read them, maybe in a hot loop): no stack is taken.
  const AT_ONCE = ["now", "random", "uuid"];

  function call(kind, payload, refusal) {
    const site = AT_ONCE.includes(kind) ? undefined : callSite();
    let sent;
    try {
      sent = stringify(payload === undefined ? {} : payload);
    } catch (e) {
      // A BigInt, a cycle, a getter or `toJSON` that throws: the call's
      // arguments are not JSON, which its promise rejects with (as every
      // other bad argument), not a throw where the call is made. Nothing
      // is journaled, so a replay refuses the same way.
      if (AT_ONCE.includes(kind)) throw e;
      return notJson(kind, e, site);
    }
    const answer = parse(refusal === undefined ? native(kind, sent) : native(kind, sent, refusal));
    if ("sync" in answer) return answer.sync;
    // A clock or randomness read refused (a limit): it throws where it was made.
    if ("error" in answer && AT_ONCE.includes(kind)) throw fail(answer.error, site);
    if ("value" in answer) return Promise.resolve(answer.value);
    if ("error" in answer) return Promise.reject(fail(answer.error, site));
    return new Promise((resolve, reject) => pending.set(answer.pending, { resolve, reject, site }));
  }

  // What a thrown value says, whatever it is (its `message` may throw too).
  function thrownMessage(e) {
    try {
      return String(e && e.message);
    } catch (_) {
      return "it threw";
    }
  }

  function notJson(kind, e, site) {
    return Promise.reject(
      fail({ class: "cairn", code: "invalid_request", message: `ctx.${kind}'s arguments are not JSON: ${thrownMessage(e)}` }, site),
    );
  }

  // Options a call does not take are refused, not ignored: a misspelt
  // `timeoutMs` would otherwise wait for ever.
  function badOptions(what, opts, known) {
    if (opts === undefined || opts === null) return null;
    if (typeof opts !== "object" || Array.isArray(opts)) return `${what}'s options must be an object`;
    const unknown = Object.keys(opts).filter((k) => !known.includes(k));
    if (unknown.length === 0) return null;
    return `${what} takes no option \`${unknown[0]}\` (its options: ${known.map((k) => `\`${k}\``).join(", ")})`;
  }

  function refuse(message) {
    return Promise.reject(fail({ class: "cairn", code: "invalid_request", message }));
  }

  // A value given where an option takes a choice is the choice or refused:
  // `timeoutMs: null` is no "no deadline", nor a disposition of `null` no
  // `rerunnable`. Such a call once ran as that default and was journaled
  // so: it is sent as it was then, with the refusal beside it (never in
  // it, where a script's own `Object.prototype` could reach). The engine
  // takes it as journaled where a journal holds it, and refuses it (a
  // counted call whose result is the refusal) where none does.
  function refused(kind, payload, message) {
    return call(kind, payload, message);
  }

  // An option's value as JSON, made once (a `toJSON` or a getter runs
  // once, as when the call is sent): its text (`undefined` for what JSON
  // leaves out), or what it threw.
  function once(v) {
    try {
      return { text: stringify(v) };
    } catch (e) {
      return { error: e };
    }
  }

  // The value an option travels as, from its JSON text.
  function travelled(json) {
    return json.text === undefined ? undefined : parse(json.text);
  }

  // A value as a script wrote it, for a refusal's message (a primitive,
  // else what it travels as).
  function written(v, json) {
    if (typeof v === "bigint") return `${v}n`;
    if (typeof v === "number" || typeof v === "symbol" || typeof v === "function") return String(v);
    return json.text === undefined ? "nothing" : json.text;
  }

  // A duration as it travels: JSON has no NaN or Infinity (they would
  // arrive as null, which a timeout reads as none), so a number that is not
  // finite goes as its text, refused as any other bad duration.
  function duration(ms) {
    return typeof ms === "number" && !Number.isFinite(ms) ? String(ms) : ms;
  }

  // Whether a duration is a number that is not finite: refused here, where
  // it is still a number, so the refusal says it as one (`not NaN`), not as
  // the text it travels as (`not "NaN"`, which a string would be).
  function nonFinite(ms) {
    return typeof ms === "number" && !Number.isFinite(ms);
  }

  // `s` with each lone surrogate (half a character, which no JSON text a
  // store reads can carry) replaced by U+FFFD.
  function wellFormed(s) {
    return s.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD");
  }

  function text(v) {
    if (typeof v === "string") return v;
    // An error's message and stack are not its own enumerable fields:
    // JSON would write `{}`.
    if (v instanceof EngineError) {
      const extra = ["code", "process_id"]
        .filter((k) => typeof v[k] === "string")
        .map((k) => ` (${k} ${v[k]})`)
        .join("");
      return `${v.name}: ${v.message}${extra}`;
    }
    try {
      const s = stringify(v);
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
    tool: (name, toolArgs, opts) => {
      const bad = badOptions("ctx.tool", opts, ["disposition"]);
      if (bad) return refuse(bad);
      const given = opts ? opts.disposition : undefined;
      const payload = { name, args: toolArgs === undefined ? null : toolArgs, disposition: given || "rerunnable" };
      // A Symbol travels as nothing (JSON leaves it out): named as it is.
      if (typeof name === "symbol") return refused("tool", payload, `ctx.tool(name, args) takes a string, not ${String(name)}`);
      if (given === undefined || (typeof given === "string" && given !== "")) return call("tool", payload);
      // No string: sent as it travelled before (`given || "rerunnable"`).
      const json = once(given || "rerunnable");
      if (json.error) return notJson("tool", json.error, callSite());
      payload.disposition = travelled(json);
      const said = written(given, given ? json : once(given));
      return refused("tool", payload, `ctx.tool's disposition is \`rerunnable\` (the default, when it is left out) or \`owner_bound\` (a tool call is run here, so never \`externally_owned\`), not ${said}`);
    },
    // A child's id is `{processId}/{n}` (SPEC §14): an id of the caller's
    // choosing would be replaced, so it is refused instead.
    start: (request) => {
      // Asking is reading it too (a Proxy's `has` trap may throw): what it
      // throws rejects, as any other bad argument.
      let named;
      try {
        named = request !== null && typeof request === "object" && "id" in request;
      } catch (e) {
        return Promise.reject(
          fail({ class: "cairn", code: "invalid_request", message: `ctx.start's request cannot be read: ${thrownMessage(e)}` }, callSite()),
        );
      }
      if (named) {
        return refuse(`ctx.start names its child \`${processId}/{n}\` itself: leave \`id\` out of the request`);
      }
      // What is sent decides (a `caused_by` JSON leaves out is none).
      const json = once(request);
      if (json.error) return notJson("start", json.error, callSite());
      const sent = travelled(json);
      if (sent !== null && typeof sent === "object" && sent.caused_by !== undefined) {
        return refused("start", { request: sent }, `ctx.start names its child's parent (\`${processId}\`) itself: leave \`caused_by\` out of the request`);
      }
      return call("start", { request: sent });
    },
    wait: (id) =>
      typeof id === "symbol"
        ? refused("wait", { id }, `ctx.wait(id) takes the id of a child process (a string), not ${String(id)}`)
        : call("wait", { id }),
    turn: (session, input, outputContract) =>
      call("turn", { session, input: input === undefined ? null : input, output_contract: outputContract === undefined ? null : outputContract }),
    sleep: (ms) =>
      nonFinite(ms)
        ? refused("sleep", { ms: duration(ms) }, `ctx.sleep(ms) takes a number of milliseconds from 0 up, not ${ms}`)
        : call("sleep", { ms }),
    waitSignal: (name, opts) => {
      const bad = badOptions("ctx.waitSignal", opts, ["timeoutMs"]);
      if (bad) return refuse(bad);
      const p = { name };
      const given = opts ? opts.timeoutMs : undefined;
      if (given === undefined) return call("wait_signal", p);
      if (nonFinite(given)) {
        p.timeout_ms = duration(given);
        return refused("wait_signal", p, `ctx.waitSignal's timeoutMs takes a number of milliseconds from 0 up, not ${given}`);
      }
      const json = once(given);
      if (json.error) return notJson("wait_signal", json.error, callSite());
      p.timeout_ms = travelled(json);
      // What travels as nothing (`null`, a function, an invalid Date) is
      // no deadline of "none": refused.
      if (p.timeout_ms === undefined || p.timeout_ms === null) {
        return refused("wait_signal", p, `ctx.waitSignal's timeoutMs takes a number of milliseconds from 0 up, not ${written(given, json)} (leave it out to wait without a deadline)`);
      }
      return call("wait_signal", p);
    },
    emit: (type, payload) => {
      const p = { type, payload: payload === undefined ? null : payload };
      // A Symbol travels as nothing (JSON leaves it out): named as it is.
      if (typeof type === "symbol") return refused("emit", p, `ctx.emit(type, payload) takes a string, not ${String(type)}`);
      return call("emit", p);
    },
    now: () => call("now"),
    random: () => call("random"),
    uuid: () => call("uuid"),
    // Resolves at once: a line is never lost. A lone surrogate in it (half
    // a character) becomes U+FFFD here, and the engine cuts a line too large
    // to journal to fit, marked as cut. It rejects only past the call limit,
    // which stops the script.
    log: (...parts) => {
      const answer = parse(native("log", stringify({ message: wellFormed(parts.map(text).join(" ")) })));
      return "error" in answer ? Promise.reject(fail(answer.error)) : Promise.resolve();
    },
  });

  // The only clock and the only randomness are the journaled ones: `Date.now()`,
  // `new Date()` and `Date()` each read `ctx.now()`; a Date of given parts is
  // the engine's own.
  const EngineDate = Date;
  function JournaledDate(...parts) {
    if (new.target === undefined) return new EngineDate(ctx.now()).toString();
    // Parts of a date are read in UTC, the only time zone a script has.
    const time = parts.length === 0 ? [ctx.now()] : parts.length === 1 ? [utcTime(parts[0])] : [EngineDate.UTC(...parts)];
    return Reflect.construct(EngineDate, time, new.target);
  }
  // Local time is UTC: the server's time zone is no journaled input, so a
  // replay on a node in another zone (or after a zone change) would otherwise
  // see other hours and take another path. Every local method answers as its
  // UTC twin; a date-time string without an offset is read as UTC.
  const P = EngineDate.prototype;
  const engineOffset = P.getTimezoneOffset;
  for (const part of ["FullYear", "Month", "Date", "Day", "Hours", "Minutes", "Seconds", "Milliseconds"]) {
    Object.defineProperty(P, "get" + part, { value: P["getUTC" + part], writable: true, configurable: true });
    if (part !== "Day") {
      Object.defineProperty(P, "set" + part, { value: P["setUTC" + part], writable: true, configurable: true });
    }
  }
  // The legacy two-digit year methods read and write local time too (Annex B).
  Object.defineProperty(P, "getYear", {
    value: function getYear() { return this.getUTCFullYear() - 1900; },
    writable: true,
    configurable: true,
  });
  Object.defineProperty(P, "setYear", {
    value: function setYear(year) {
      const y = Number(year);
      const whole = Math.trunc(y);
      return this.setUTCFullYear(whole >= 0 && whole <= 99 ? 1900 + whole : y);
    },
    writable: true,
    configurable: true,
  });
  const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const pad = (n, w) => String(n).padStart(w, "0");
  function dateString(d) {
    const y = d.getUTCFullYear();
    const year = y < 0 ? "-" + pad(-y, 6) : pad(y, 4);
    return DAYS[d.getUTCDay()] + " " + MONTHS[d.getUTCMonth()] + " " + pad(d.getUTCDate(), 2) + " " + year;
  }
  function timeString(d) {
    return pad(d.getUTCHours(), 2) + ":" + pad(d.getUTCMinutes(), 2) + ":" + pad(d.getUTCSeconds(), 2) + " GMT+0000";
  }
  const valid = (d) => !isNaN(EngineDate.prototype.getTime.call(d));
  const methods = {
    getTimezoneOffset() {
      return valid(this) ? 0 : NaN;
    },
    toString() {
      return valid(this) ? dateString(this) + " " + timeString(this) + " (Coordinated Universal Time)" : "Invalid Date";
    },
    toDateString() {
      return valid(this) ? dateString(this) : "Invalid Date";
    },
    toTimeString() {
      return valid(this) ? timeString(this) + " (Coordinated Universal Time)" : "Invalid Date";
    },
    toLocaleString() {
      return valid(this) ? this.toISOString().replace("T", " ").replace(/\.\d+Z$/, "") : "Invalid Date";
    },
    toLocaleDateString() {
      return valid(this) ? this.toISOString().slice(0, 10) : "Invalid Date";
    },
    toLocaleTimeString() {
      return valid(this) ? this.toISOString().slice(11, 19) : "Invalid Date";
    },
  };
  for (const [name, value] of Object.entries(methods)) {
    Object.defineProperty(P, name, { value, writable: true, configurable: true });
  }
  // A string without an offset of its own (a date alone is UTC already) is
  // read with UTC's: the engine would read it in local time, and moving
  // that back by an offset is an hour out near a daylight saving change
  // (the offset where the text was read is not the offset where it lands).
  // Only a form that takes no offset is moved back by the local one.
  function utcParse(text) {
    const t = EngineDate.parse(text);
    // Text in parentheses is a comment the engine skips: a zone named
    // there (`10:00 (UTC)`) is no offset, and would hide that none is given.
    const s = String(text).replace(/\([^()]*\)/g, " ").trim();
    // An offset comes after a time of day, right after it or as a word of
    // its own (a dash between a date's parts, before the time, is none; the
    // engine takes `+1`, `+01`, `+0100`, `+01:00`, and U+2212 as a minus);
    // the engine reads these zone names too, as words of their own (the
    // last one named wins, so one is never followed by another).
    const time = s.search(/\d:\d\d/);
    const zoned =
      (time >= 0 &&
        /(?:\d:\d\d(?::\d\d(?:\.\d+)?)?\s*|\s)(?:Z|[+\-\u2212]\d{1,2}(?::?\d\d)?)\b/i.test(s.slice(time))) ||
      /Z$/i.test(s) ||
      /(?<![a-z])(GMT|UTC|UT|[ECMP][SD]T|WES?T|CES?T|EES?T)\b/i.test(s) ||
      /^[+-]?\d{4,6}(-\d\d){0,2}$/.test(s);
    if (isNaN(t) || zoned) return t;
    const asUtc = EngineDate.parse(/^[+-]?\d{4,6}-\d\d-\d\dT/i.test(s) ? s + "Z" : s + " GMT");
    if (!isNaN(asUtc)) return asUtc;
    return t - engineOffset.call(new EngineDate(t)) * 60000;
  }
  function utcTime(v) {
    return typeof v === "string" ? utcParse(v) : v instanceof EngineDate ? EngineDate.prototype.getTime.call(v) : v;
  }
  Object.defineProperty(JournaledDate, "name", { value: "Date" });
  Object.defineProperty(JournaledDate, "length", { value: 7 });
  JournaledDate.prototype = EngineDate.prototype;
  Object.defineProperty(EngineDate.prototype, "constructor", { value: JournaledDate, writable: true, configurable: true });
  JournaledDate.now = () => ctx.now();
  JournaledDate.parse = utcParse;
  JournaledDate.UTC = EngineDate.UTC;
  globalThis.Date = JournaledDate;
  // The engine's monotonic clock would differ on every replay; so would
  // what the collector has taken, which weak references and finalizers show
  // (a replay allocates differently).
  delete globalThis.performance;
  delete globalThis.WeakRef;
  delete globalThis.FinalizationRegistry;
  Math.random = () => ctx.random();
  // `console` writes what `ctx.log` writes (journaled, counted as a call,
  // not repeated on replay); it answers nothing, as a console does.
  const consoleLine = (...parts) => {
    ctx.log(...parts);
  };
  globalThis.console = Object.freeze({
    log: consoleLine,
    info: consoleLine,
    warn: consoleLine,
    error: consoleLine,
    debug: consoleLine,
  });

  // What a thrown value says; a value whose fields throw when read (a
  // getter, a Proxy) is still an uncaught error, described as far as it can be.
  function describe(e) {
    try {
      return describeFields(e);
    } catch (_) {
      return { code: "uncaught", message: "the thrown value could not be read", stack: null };
    }
  }

  // What a failure carries is text an outcome can hold: a lone surrogate
  // (a string cut inside an emoji) is no JSON a store reads, and a message
  // of megabytes (a command's whole output) would pass what one outcome may
  // hold, losing the code with it. Cut to a bound, and made well-formed.
  const MESSAGE_CHARS = 65536;
  const STACK_CHARS = 16384;
  function storable(s, most) {
    let t = String(s);
    if (t.length > most) t = t.slice(0, most) + "… (cut)";
    return wellFormed(t);
  }

  function describeFields(e) {
    if (e !== null && typeof e === "object") {
      return {
        code: typeof e.code === "string" && e.code.length > 0 ? storable(e.code, 256) : "uncaught",
        message: storable(e.message === undefined ? text(e) : String(e.message), MESSAGE_CHARS),
        stack: e.stack === undefined ? null : storable(e.stack, STACK_CHARS),
      };
    }
    return { code: "uncaught", message: storable(text(e), MESSAGE_CHARS), stack: null };
  }

  return {
    describe: (e) => stringify(describe(e)),
    exportsOf: (ns) => stringify(Object.keys(ns).filter((k) => typeof ns[k] === "function").sort()),
    start(ns, name) {
      let p;
      try {
        // Stored, the export was a function; a module whose top level makes
        // it something else this time fails naming it, not "not a function".
        const f = ns[name];
        const what = typeof f !== "function" ? (f === null ? "null" : typeof f)
          : /^class\b/.test(Function.prototype.toString.call(f)) ? "a class"
          : ["GeneratorFunction", "AsyncGeneratorFunction"].includes(Object.getPrototypeOf(f)?.constructor?.name) ? "a generator"
          : null;
        if (what !== null) {
          throw Object.assign(
            new Error(`the module's export \`${name}\` is not a function in this activation (it is ${what}): a script's export must be a function each time the module runs`),
            { code: "unknown_export" },
          );
        }
        p = Promise.resolve(ns[name](ctx, args));
      } catch (e) {
        p = Promise.reject(e);
      }
      p.then(
        (v) => {
          const invalid = (why) =>
            stringify({ err: { code: "invalid_result", message: "the returned value is not JSON: " + why, stack: null } });
          try {
            const json = v === undefined ? "null" : stringify(v);
            // A function or a Symbol (or a toJSON that answers one) has no JSON.
            outcome = json === undefined ? invalid("a " + typeof v) : '{"ok":' + json + "}";
          } catch (e) {
            outcome = invalid(text(e.message));
          }
        },
        (e) => {
          outcome = stringify({ err: describe(e) });
        }
      );
    },
    outcome: () => outcome,
    settled: () => outcome !== null,
    deliver(n, json) {
      const slot = pending.get(n);
      if (!slot) return;
      pending.delete(n);
      const answer = parse(json);
      if ("error" in answer) slot.reject(fail(answer.error, slot.site));
      else slot.resolve(answer.value);
    },
  };
})
