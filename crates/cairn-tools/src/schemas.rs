//! The JSON Schemas of the built-in tools' `args`, for documents that describe
//! them (the server's OpenAPI document, `docs/reference.md`). Each tool's own
//! `validate_args` stays the authority; the tests below hold each schema to it.

// Text that is not blank: the tools trim with `char::is_whitespace`, as the core does.
use cairn_core::schema_limits::NOT_BLANK;
use serde_json::{json, Value};

/// Longest `sleep` or timeout the tools take (a year: durable sleeps and
/// waits run for days, SPEC §13); a longer one is refused at start.
pub const LONGEST_MS: u64 = cairn_core::validate::LONGEST_WAIT_MS;

/// How much of a `shell` command's output is appended (bytes, both streams,
/// each line with its newline) when its args give no `max_output_bytes`.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 * 1024 * 1024;

/// The largest `max_output_bytes` taken (1 GiB); a larger one is refused at start.
pub const MOST_OUTPUT_BYTES: u64 = 1024 * 1024 * 1024;

/// The `args` schema of built-in tool `name`, or `None` for another name.
pub fn args_schema(name: &str) -> Option<Value> {
    let signal_name = cairn_core::schema_limits::signal_name("The signal name: ASCII letters, digits, `_`, `-`.");
    let ms =
        |description: &str| json!({"type": "integer", "minimum": 0, "maximum": LONGEST_MS, "description": description});
    let schema = match name {
        "echo" => json!({
            "type": "object", "additionalProperties": false,
            "properties": {"value": {"description": "Any JSON: the process succeeds with it (default null)."}},
        }),
        "sleep" => json!({
            "type": "object", "additionalProperties": false, "required": ["ms"],
            "properties": {"ms": ms("How long to sleep; cancellable.")},
        }),
        "wait_signal" => json!({
            "type": "object", "additionalProperties": false, "required": ["name"],
            "properties": {
                "name": signal_name,
                "timeout_ms": ms("Give up after this long: the process fails with code `timeout`."),
            },
        }),
        "shell" => json!({
            "type": "object", "additionalProperties": false,
            "oneOf": [{"required": ["argv"]}, {"required": ["command"]}],
            "properties": {
                "argv": {"type": "array", "minItems": 1, "items": {"type": "string"},
                         "description": "The program (not empty) and its arguments (no shell)."},
                "command": {"type": "string", "minLength": 1, "description": "A command line run by `/bin/sh -c`."},
                "cwd": {"type": "string", "minLength": 1, "description": "Working directory (default: the server's)."},
                "env": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "Variables added to the server's environment."},
                "timeout_ms": {"type": "integer", "minimum": 1, "maximum": LONGEST_MS,
                               "description": "Stop the whole process group after this long (at least 1 ms)."},
                "max_output_bytes": {"type": "integer", "minimum": 0, "maximum": MOST_OUTPUT_BYTES,
                                     "description": format!(
                    "The most output appended as `shell.output`, in bytes: stdout and stderr together, \
                     each line with its newline (default {DEFAULT_MAX_OUTPUT_BYTES}, 64 MiB; at most \
                     {MOST_OUTPUT_BYTES}, 1 GiB). From the first line past it no more lines are kept \
                     (a line says so), while the command runs on and its output is still read: the \
                     result's tails are its real last lines, its outcome is as without the bound, and \
                     a last line of each stream that lost lines tells how many lines and bytes were not kept."
                )},
            },
        }),
        _ => return None,
    };
    Some(schema)
}

/// Text without a NUL, which the tools refuse in any text they pass on.
const NO_NUL: &str = "^[^\\u0000]*$";

/// The `args` schema of built-in tool `name` as the tools take args, for a
/// document whose every body is checked against it (the OpenAPI document,
/// MCP's `process_start`), or `None` for another name. Beyond
/// [`args_schema`]: an optional argument given as null is one left out (the
/// tools read them as `Option`s), so each is nullable, and an argument a
/// `oneOf` requires is one given, not null (`shell`: `argv` or `command`);
/// `shell` refuses a NUL in any text it passes on (`argv`, `command`, `cwd`,
/// `env`), a blank `command`, an empty program (`argv[0]`) and an `env`
/// name that is empty or holds `=`.
pub fn args_schema_as_taken(name: &str) -> Option<Value> {
    let mut args = args_schema(name)?;
    let required: Vec<Value> = args
        .get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(props) = args.get_mut("properties").and_then(Value::as_object_mut) {
        for (field, prop) in props.iter_mut() {
            match field.as_str() {
                "argv" => {
                    prop["items"]["pattern"] = json!(NO_NUL);
                    prop["prefixItems"] = json!([{"minLength": 1}]);
                }
                "command" => {
                    prop["pattern"] = json!(NOT_BLANK);
                    prop["not"] = json!({"type": "string", "pattern": "\\u0000"});
                }
                "cwd" => prop["pattern"] = json!(NO_NUL),
                "env" if prop.get("additionalProperties").is_some() => {
                    prop["additionalProperties"]["pattern"] = json!(NO_NUL);
                    prop["propertyNames"] = json!({"minLength": 1, "pattern": "^[^=\\u0000]*$"});
                }
                _ => {}
            }
            if required.contains(&json!(field)) {
                continue;
            }
            if let Some(t) = prop.get("type").and_then(Value::as_str) {
                prop["type"] = json!([t, "null"]);
            }
        }
    }
    if let Some(branches) = args.get_mut("oneOf").and_then(Value::as_array_mut) {
        for branch in branches {
            let named: Vec<String> = branch
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            for field in named {
                branch["properties"][field] = json!({"not": {"type": "null"}});
            }
        }
    }
    Some(args)
}

/// An `args` value of built-in tool `name` using every property its schema names
/// (for `shell`, `argv` rather than `command`).
pub fn args_example(name: &str) -> Option<Value> {
    let example = match name {
        "echo" => json!({"value": {"ok": true}}),
        "sleep" => json!({"ms": 1000}),
        "wait_signal" => json!({"name": "approve", "timeout_ms": 60000}),
        "shell" => json!({
            "argv": ["make", "test"], "cwd": "/tmp", "env": {"CI": "1"}, "timeout_ms": 600000,
            "max_output_bytes": 1048576,
        }),
        _ => return None,
    };
    Some(example)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_has_a_schema_its_example_and_its_tool_agree_on() {
        let tools = crate::builtin_tools(true);
        for name in tools.names() {
            let tool = tools.get(&name).expect("listed");
            let schema = args_schema(&name).unwrap_or_else(|| panic!("no schema for {name}"));
            let example = args_example(&name).unwrap_or_else(|| panic!("no example for {name}"));
            let validator = jsonschema::validator_for(&schema).expect("schema compiles");
            assert!(validator.is_valid(&example), "{name}: example fails its schema");
            tool.validate_args(&example)
                .unwrap_or_else(|e| panic!("{name}: the tool refuses its example: {e}"));
            // The example names every property but `shell`'s `command` (exclusive with `argv`).
            let names: Vec<&String> = schema["properties"].as_object().expect("properties").keys().collect();
            for key in names {
                if name == "shell" && key == "command" {
                    continue;
                }
                assert!(example.get(key.as_str()).is_some(), "{name}: the example lacks {key}");
            }
            // What the schema refuses as unknown, the tool refuses too.
            let mut extra = example.clone();
            extra["surely_unknown"] = json!(1);
            assert!(!validator.is_valid(&extra));
            assert!(tool.validate_args(&extra).is_err(), "{name} takes an unknown arg");
        }
        let mut command = args_example("shell").expect("shell");
        command.as_object_mut().expect("object").remove("argv");
        command["command"] = json!("make test");
        assert!(tools.get("shell").expect("shell").validate_args(&command).is_ok());
        // The program is named; an argument after it may be empty (`printf
        // '%s\n' ''`), for the schema as for the tool.
        let shell_schema = jsonschema::validator_for(&args_schema("shell").expect("shell")).expect("compiles");
        let shell = tools.get("shell").expect("shell");
        let empty_arg = json!({"argv": ["printf", "%s\n", ""]});
        assert!(shell_schema.is_valid(&empty_arg));
        assert!(shell.validate_args(&empty_arg).is_ok());
        assert!(shell.validate_args(&json!({"argv": ["", "x"]})).is_err());
        assert!(args_schema("nope").is_none());
    }

    /// The schemas as the tools take args say what each tool refuses: a
    /// null read as left out, NULs, a blank command, an empty program or
    /// `env` name, a signal name's characters and length.
    #[test]
    fn the_schemas_as_taken_agree_with_the_tools() {
        let tools = crate::builtin_tools(true);
        let cases = [
            ("echo", json!(null), true),
            ("echo", json!({"value": null}), true),
            ("echo", json!({"x": 1}), false),
            ("sleep", json!({"ms": null}), false),
            ("wait_signal", json!({"name": "go", "timeout_ms": null}), true),
            ("wait_signal", json!({"name": null}), false),
            ("wait_signal", json!({"name": ""}), false),
            ("wait_signal", json!({"name": "a b"}), false),
            ("wait_signal", json!({"name": "go\u{0}"}), false),
            ("wait_signal", json!({"name": "n".repeat(128)}), true),
            ("wait_signal", json!({"name": "n".repeat(129)}), false),
            (
                "shell",
                json!({"argv": null, "command": "true", "cwd": null, "env": null, "timeout_ms": null}),
                true,
            ),
            ("shell", json!({"argv": ["true"], "command": null}), true),
            ("shell", json!({"argv": null, "command": null}), false),
            ("shell", json!({"argv": ["true"], "command": "true"}), false),
            ("shell", json!({"command": " \t\u{3000}"}), false),
            ("shell", json!({"command": "true\u{0}"}), false),
            ("shell", json!({"argv": ["", "x"]}), false),
            ("shell", json!({"argv": ["printf", ""]}), true),
            ("shell", json!({"argv": ["true", "a\u{0}"]}), false),
            ("shell", json!({"command": "true", "cwd": ""}), false),
            ("shell", json!({"command": "true", "cwd": "/tmp\u{0}"}), false),
            ("shell", json!({"command": "true", "env": {"A": "1"}}), true),
            ("shell", json!({"command": "true", "env": {"A=B": "1"}}), false),
            ("shell", json!({"command": "true", "env": {"": "1"}}), false),
            ("shell", json!({"command": "true", "env": {"A\u{0}": "1"}}), false),
            ("shell", json!({"command": "true", "env": {"A": "1\u{0}"}}), false),
            ("shell", json!({"command": "true", "timeout_ms": 0}), false),
            ("shell", json!({"command": "true", "max_output_bytes": null}), true),
            ("shell", json!({"command": "true", "max_output_bytes": 0}), true),
            (
                "shell",
                json!({"command": "true", "max_output_bytes": MOST_OUTPUT_BYTES}),
                true,
            ),
            (
                "shell",
                json!({"command": "true", "max_output_bytes": MOST_OUTPUT_BYTES + 1}),
                false,
            ),
            ("shell", json!({"command": "true", "max_output_bytes": -1}), false),
            ("shell", json!({"command": "true", "max_output_bytes": 1.5}), false),
            ("shell", json!({"command": "true", "max_output_bytes": "1000"}), false),
        ];
        for (name, args, taken) in cases {
            let schema = args_schema_as_taken(name).unwrap_or_else(|| panic!("{name}"));
            let validator = jsonschema::validator_for(&schema).expect("schema compiles");
            // A tool none of whose args is required takes none (`null`).
            let schema_takes = validator.is_valid(&args) || (args.is_null() && schema.get("required").is_none());
            assert_eq!(schema_takes, taken, "the schema of {name}, of {args}");
            let tool = tools.get(name).expect(name);
            assert_eq!(tool.validate_args(&args).is_ok(), taken, "{name}, of {args}");
        }
        assert!(args_schema_as_taken("nope").is_none());
    }

    /// SPEC §13's own example, a three-day durable sleep, meets the schema.
    #[test]
    fn a_sleep_of_days_meets_the_schema() {
        let schema = args_schema("sleep").expect("sleep");
        let validator = jsonschema::validator_for(&schema).expect("schema compiles");
        assert!(validator.is_valid(&json!({"ms": 259_200_000u64})));
        assert!(!validator.is_valid(&json!({"ms": -1})));
    }

    /// The tools refuse what the schemas' `maximum` refuses: a due time past
    /// it would not fit the stored integers.
    #[test]
    fn durations_past_the_schema_maximum_are_refused_at_start() {
        let tools = crate::builtin_tools(true);
        let too_long = LONGEST_MS + 1;
        for (tool, args) in [
            ("sleep", json!({"ms": too_long})),
            ("sleep", json!({"ms": u64::MAX})),
            ("wait_signal", json!({"name": "go", "timeout_ms": too_long})),
            ("shell", json!({"argv": ["true"], "timeout_ms": u64::MAX})),
        ] {
            let err = tools.get(tool).expect(tool).validate_args(&args).expect_err(tool);
            assert_eq!(err.code(), "invalid_request", "{tool}: {err}");
            assert!(err.to_string().contains("over the limit"), "{tool}: {err}");
        }
        assert!(tools
            .get("sleep")
            .expect("sleep")
            .validate_args(&json!({"ms": LONGEST_MS}))
            .is_ok());
    }

    /// A shell command's timeout of 0 is refused at start, by the tool and
    /// its schema alike (it would stop the command as it starts, or not).
    #[test]
    fn a_shell_timeout_of_zero_is_refused() {
        let tools = crate::builtin_tools(true);
        let shell = tools.get("shell").expect("shell");
        let schema = jsonschema::validator_for(&args_schema("shell").expect("shell")).expect("compiles");
        let zero = json!({"command": "true", "timeout_ms": 0});
        let err = shell.validate_args(&zero).expect_err("timeout 0");
        assert_eq!(err.code(), "invalid_request", "{err}");
        assert!(err.to_string().contains("`timeout_ms` is 0"), "{err}");
        assert!(!schema.is_valid(&zero));
        let one = json!({"command": "true", "timeout_ms": 1});
        assert!(shell.validate_args(&one).is_ok());
        assert!(schema.is_valid(&one));
    }
}
