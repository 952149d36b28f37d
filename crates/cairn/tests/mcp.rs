//! MCP (SPEC §16) through a real MCP client (rmcp's), against the real binary
//! on SQLite: `cairn serve`'s `/mcp` (streamable HTTP) and `cairn mcp` (stdio,
//! forwarding to that server).

mod common;

use std::time::{Duration, Instant};

use common::{Server, BIN};
use rmcp::model::{CallToolRequestParams, CallToolResult, ErrorCode, JsonObject, Tool};
use rmcp::service::{RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};

const HOST: &str = "host-secret";
const S1: &str = "token-s1";
const S2: &str = "token-s2";

type McpClient = RunningService<RoleClient, ()>;

#[derive(Clone, Copy, Debug)]
enum Transport {
    Http,
    Stdio,
}

struct Fixture {
    server: Server,
    _dir: tempfile::TempDir,
}

async fn server() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").display());
    let server = Server::start_on(
        &db,
        &[
            "--token",
            HOST,
            "--session-token",
            &format!("s1={S1}"),
            "--session-token",
            &format!("s2={S2}"),
        ],
    )
    .await;
    Fixture { server, _dir: dir }
}

async fn connect(server: &Server, transport: Transport, token: &str) -> McpClient {
    match transport {
        Transport::Http => {
            let config = StreamableHttpClientTransportConfig::with_uri(server.url("/mcp")).auth_header(token);
            ().serve(StreamableHttpClientTransport::from_config(config))
                .await
                .expect("initialize over streamable HTTP")
        }
        Transport::Stdio => {
            // The CLI's environment variables, as an MCP client configuration would set them.
            let mut cmd = tokio::process::Command::new(BIN);
            cmd.arg("mcp")
                .env("CAIRN_SERVER", &server.base)
                .env("CAIRN_TOKEN", token)
                .env("RUST_LOG", "warn");
            ().serve(TokioChildProcess::new(cmd).expect("spawn cairn mcp"))
                .await
                .expect("initialize over stdio")
        }
    }
}

fn args(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        other => panic!("arguments must be an object, got {other}"),
    }
}

async fn call(client: &McpClient, tool: &str, arguments: Value) -> Result<CallToolResult, ServiceError> {
    client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args(arguments)))
        .await
}

/// A successful call's structured result, checked against the tool's output schema.
async fn ok(client: &McpClient, tools: &[Tool], tool: &str, arguments: Value) -> Value {
    let result = call(client, tool, arguments.clone())
        .await
        .expect("tools/call answered");
    assert_eq!(
        result.is_error,
        Some(false),
        "{tool} {arguments} failed: {:?}",
        result.content
    );
    let value = result.structured_content.clone().expect("structured content");
    let text = result.content[0].as_text().expect("text mirror").text.clone();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        value,
        "text mirrors the structure"
    );
    let schema = tools
        .iter()
        .find(|t| t.name == tool)
        .and_then(|t| t.output_schema.clone())
        .expect("output schema");
    let validator = jsonschema::validator_for(&Value::Object((*schema).clone())).expect("output schema compiles");
    if let Err(e) = validator.validate(&value) {
        panic!("{tool} answered {value} outside its output schema: {e}");
    }
    value
}

/// A failed call's cairn error `{code, message}`.
async fn err(client: &McpClient, tool: &str, arguments: Value) -> (String, String) {
    let result = call(client, tool, arguments.clone())
        .await
        .expect("tools/call answered");
    assert_eq!(result.is_error, Some(true), "{tool} {arguments} should fail");
    let text = &result.content[0].as_text().expect("text content").text;
    let body: Value = serde_json::from_str(text).expect("error body is JSON");
    (
        body["error"]["code"].as_str().expect("code").to_string(),
        body["error"]["message"].as_str().expect("message").to_string(),
    )
}

fn start_args(id: &str, tool: &str, tool_args: Value) -> Value {
    json!({
        "id": id,
        "input": {"type": "tool_call", "tool": tool, "args": tool_args},
        "disposition": "rerunnable",
    })
}

/// Poll `process_get` until `pred` holds (bounded; the condition is observable state).
async fn wait_until(client: &McpClient, tools: &[Tool], id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let record = ok(client, tools, "process_get", json!({"id": id})).await;
        if pred(&record) {
            return record;
        }
        assert!(Instant::now() < deadline, "{id} never reached the state: {record}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn tools(client: &McpClient) -> Vec<Tool> {
    client.list_all_tools().await.expect("tools/list")
}

fn check_tool_list(tools: &[Tool]) {
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "module_put",
            "process_await",
            "process_cancel",
            "process_complete",
            "process_events",
            "process_get",
            "process_list",
            "process_signal",
            "process_start",
            "schedule_list",
            "schedule_pause",
            "schedule_resume"
        ]
    );
    let tool = |name: &str| tools.iter().find(|t| t.name == name).unwrap();
    for t in tools {
        assert_eq!(t.input_schema.get("type"), Some(&json!("object")), "{}", t.name);
        assert!(t.output_schema.is_some(), "{} has an output schema", t.name);
        let a = t.annotations.as_ref().expect("annotations");
        assert!(a.read_only_hint.is_some() && a.destructive_hint.is_some() && a.idempotent_hint.is_some());
    }
    // The start schema is the HTTP API's start request.
    let start = &tool("process_start").input_schema;
    for field in ["id", "input", "disposition"] {
        assert!(
            start["required"].as_array().unwrap().contains(&json!(field)),
            "{field} required"
        );
    }
    assert!(start["properties"].get("event_types").is_some());
    let signal = &tool("process_signal").input_schema;
    for field in ["id", "name", "signal_id"] {
        assert!(signal["required"].as_array().unwrap().contains(&json!(field)));
    }
    // MCP's hints, as its definitions make them true: (readOnly, destructive,
    // idempotent, openWorld). A start may run a shell command or call a
    // model endpoint; a signal, cancel or completion may release a script
    // that does; a resumed schedule starts processes again.
    let hints = |name: &str| {
        let a = tool(name).annotations.clone().unwrap();
        (
            a.read_only_hint,
            a.destructive_hint,
            a.idempotent_hint,
            a.open_world_hint,
        )
    };
    let reader = (Some(true), Some(false), Some(true), Some(false));
    for (name, expected) in [
        ("process_start", (Some(false), Some(true), Some(true), Some(true))),
        ("process_get", reader),
        ("process_list", reader),
        ("process_events", reader),
        ("process_await", reader),
        ("process_signal", (Some(false), Some(true), Some(true), Some(true))),
        ("process_cancel", (Some(false), Some(true), Some(true), Some(true))),
        ("process_complete", (Some(false), Some(true), Some(true), Some(true))),
        ("module_put", (Some(false), Some(false), Some(true), Some(false))),
        ("schedule_list", reader),
        ("schedule_pause", (Some(false), Some(true), Some(true), Some(false))),
        ("schedule_resume", (Some(false), Some(true), Some(true), Some(true))),
    ] {
        assert_eq!(hints(name), expected, "{name}");
    }
    for name in ["schedule_pause", "schedule_resume"] {
        assert_eq!(tool(name).input_schema["required"], json!(["id"]), "{name}");
    }
}

/// `process_start`'s schema types what a start gives as free JSON: a
/// turn's `input` (a string or messages) and `output_contract` (`text` or
/// `json_schema`), a declared type's `payload_schema` (an object or a
/// boolean) and `caused_by` (`{"process_id"}` or `{"kind", "id"}`). What it
/// refuses the server refuses, what it takes the server takes, and the
/// turn's fields say what the OpenAPI document's start input says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_schema_says_what_a_start_takes() {
    let fake = cairn_testkit::fake_openai::FakeOpenAi::start().await;
    let model = format!("default={},model=fake-1", fake.base_url());
    let server = Server::start(&["--token", HOST, "--model", &model]).await;
    let client = connect(&server, Transport::Http, HOST).await;
    let listed = tools(&client).await;
    let start = listed
        .iter()
        .find(|t| t.name == "process_start")
        .map(|t| Value::Object((*t.input_schema).clone()))
        .expect("process_start");
    let turn_of = |variants: &Value| -> Value {
        variants["oneOf"]
            .as_array()
            .and_then(|v| {
                v.iter()
                    .find(|v| v["properties"]["type"]["enum"] == json!(["session_turn"]))
            })
            .cloned()
            .expect("a session_turn variant")
    };
    let turn = turn_of(&start["$defs"]["ProcessInput"]);
    let kinds = |schema: &Value| -> Vec<Value> {
        schema["oneOf"]
            .as_array()
            .map(|forms| forms.iter().map(|f| f["type"].clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        kinds(&turn["properties"]["input"]),
        [json!("string"), json!("array")],
        "{turn}"
    );
    assert_eq!(
        kinds(&turn["properties"]["output_contract"]),
        [json!("null"), json!("object"), json!("object")],
        "{turn}"
    );
    assert_eq!(
        start["$defs"]["EventType"]["properties"]["payload_schema"]["type"],
        json!(["object", "boolean"])
    );
    // The OpenAPI document says the same of a start's turn.
    let openapi: Value = reqwest::Client::new()
        .get(server.url("/openapi.json"))
        .bearer_auth(HOST)
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("a JSON document");
    let schemas = &openapi["components"]["schemas"];
    let documented = turn_of(&schemas["StartInput"]);
    for field in ["input", "output_contract"] {
        assert_eq!(
            turn["properties"][field]["oneOf"], documented["properties"][field]["oneOf"],
            "{field}"
        );
    }
    assert_eq!(turn["required"], documented["required"]);
    assert_eq!(
        schemas["EventType"]["properties"]["payload_schema"]["type"],
        json!(["object", "boolean"])
    );
    // Each start against the schema and the server: they agree.
    let validator = jsonschema::validator_for(&start).expect("the start schema compiles");
    let external = json!({"type": "external", "metadata": {}});
    let turn_with = |fields: Value| {
        let mut input = json!({"type": "session_turn"});
        for (k, v) in fields.as_object().expect("fields") {
            input[k] = v.clone();
        }
        input
    };
    let cases = [
        // (what is given beside the id, whether it is taken)
        (json!({"input": external, "caused_by": {}}), false),
        (
            json!({"input": external, "caused_by": {"process_id": "p", "kind": "turn", "id": "t"}}),
            false,
        ),
        (json!({"input": external, "caused_by": {"kind": "turn"}}), false),
        (
            json!({"input": external, "caused_by": {"kind": "turn", "id": "t", "process_id": null}}),
            true,
        ),
        (
            json!({"input": external, "event_types": [{"name": "x.done", "payload_schema": null}]}),
            false,
        ),
        (
            json!({"input": external, "event_types": [{"name": "x.done", "payload_schema": 5}]}),
            false,
        ),
        (
            json!({"input": external, "event_types": [{"name": "x.done", "payload_schema": true}]}),
            true,
        ),
        (
            json!({"input": external, "event_types": [{"name": "x.done", "payload_schema": {"type": "object"}}]}),
            true,
        ),
        (json!({"input": turn_with(json!({}))}), false),
        (json!({"input": turn_with(json!({"input": 5}))}), false),
        (json!({"input": turn_with(json!({"input": "  "}))}), false),
        (json!({"input": turn_with(json!({"input": []}))}), false),
        (
            json!({"input": turn_with(json!({"input": [{"role": "tool", "content": "x"}]}))}),
            false,
        ),
        (
            json!({"input": turn_with(json!({"input": [{"role": "user", "content": 5}]}))}),
            false,
        ),
        (
            json!({"input": turn_with(json!({"input": "hi", "output_contract": "text"}))}),
            false,
        ),
        (
            json!({"input": turn_with(json!({"input": "hi", "output_contract": {}}))}),
            false,
        ),
        (
            json!({"input": turn_with(json!({"input": "hi", "output_contract": {"type": "json_schema"}}))}),
            false,
        ),
        (
            json!({"input": turn_with(json!({"input": "hi", "output_contract": {"type": "json_schema", "schema": true}}))}),
            false,
        ),
        (
            json!({"input": turn_with(json!({"input": "hi", "output_contract": {"type": "json_schema", "schema": {}, "repair_attempts": 6}}))}),
            false,
        ),
        (
            json!({"input": turn_with(json!({"input": "hi", "output_contract": null}))}),
            true,
        ),
        (
            json!({"input": turn_with(json!({"input": "hi", "output_contract": {"type": "text"}}))}),
            true,
        ),
        (
            json!({"input": turn_with(json!({"input": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                                             "output_contract": {"type": "json_schema", "schema": {"type": "object"}, "repair_attempts": 5}}))}),
            true,
        ),
    ];
    for (i, (fields, taken)) in cases.into_iter().enumerate() {
        let mut arguments = json!({"id": format!("schema-{i}"), "disposition": "externally_owned"});
        if fields["input"]["type"] == "session_turn" {
            arguments["disposition"] = json!("rerunnable");
        }
        for (k, v) in fields.as_object().expect("fields") {
            arguments[k] = v.clone();
        }
        assert_eq!(validator.is_valid(&arguments), taken, "the schema, of {arguments}");
        let result = call(&client, "process_start", arguments.clone())
            .await
            .expect("answered");
        assert_eq!(
            result.is_error == Some(false),
            taken,
            "the server, of {arguments}: {:?}",
            result.content
        );
    }
    let _ = client.cancel().await;
}

/// `process_start`'s schema says what the built-in tools take as `args`,
/// as the OpenAPI document's start does (the same schema, tool by tool):
/// a null read as left out, no NUL in text `shell` passes on, no blank
/// command, no empty program or `env` name, a signal name's characters and
/// length. What it refuses the server refuses; what it takes the server takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_schema_says_what_a_tool_takes() {
    let server = Server::start(&["--token", HOST]).await;
    let client = connect(&server, Transport::Http, HOST).await;
    let listed = tools(&client).await;
    let start = listed
        .iter()
        .find(|t| t.name == "process_start")
        .map(|t| Value::Object((*t.input_schema).clone()))
        .expect("process_start");
    let openapi: Value = reqwest::Client::new()
        .get(server.url("/openapi.json"))
        .bearer_auth(HOST)
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("a JSON document");
    let tool_call = start["$defs"]["ProcessInput"]["oneOf"]
        .as_array()
        .and_then(|v| {
            v.iter()
                .find(|v| v["properties"]["type"]["enum"] == json!(["tool_call"]))
        })
        .cloned()
        .expect("a tool_call variant");
    for tool in ["echo", "sleep", "wait_signal", "shell"] {
        let rule = tool_call["allOf"]
            .as_array()
            .and_then(|rules| rules.iter().find(|r| r["if"]["properties"]["tool"]["const"] == tool))
            .unwrap_or_else(|| panic!("no rule for {tool}: {tool_call}"));
        let documented = openapi["components"]["schemas"]["StartInput"]["oneOf"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["properties"]["tool"]["enum"] == json!([tool])))
            .unwrap_or_else(|| panic!("the document lacks {tool}"));
        assert_eq!(
            rule["then"]["properties"]["args"], documented["properties"]["args"],
            "{tool}"
        );
    }
    let validator = jsonschema::validator_for(&start).expect("the start schema compiles");
    let cases = [
        ("echo", None, true),
        ("echo", Some(json!(null)), true),
        ("echo", Some(json!({"value": 1, "x": 2})), false),
        ("sleep", None, false),
        ("wait_signal", None, false),
        ("wait_signal", Some(json!({"name": "go", "timeout_ms": null})), true),
        ("wait_signal", Some(json!({"name": null})), false),
        ("wait_signal", Some(json!({"name": " "})), false),
        ("wait_signal", Some(json!({"name": "go\u{0}"})), false),
        ("wait_signal", Some(json!({"name": "n".repeat(129)})), false),
        (
            "shell",
            Some(json!({"argv": null, "command": "true", "cwd": null, "env": null, "timeout_ms": null})),
            true,
        ),
        ("shell", Some(json!({"argv": ["true"], "env": {"A": "1"}})), true),
        ("shell", Some(json!({"argv": null, "command": null})), false),
        ("shell", Some(json!({"argv": ["true"], "command": "true"})), false),
        ("shell", Some(json!({"command": "  "})), false),
        ("shell", Some(json!({"command": "true\u{0}"})), false),
        ("shell", Some(json!({"argv": ["", "x"]})), false),
        ("shell", Some(json!({"argv": ["true", "a\u{0}"]})), false),
        ("shell", Some(json!({"command": "true", "cwd": ""})), false),
        ("shell", Some(json!({"command": "true", "env": {"A=B": "1"}})), false),
        ("shell", Some(json!({"command": "true", "env": {"A": "\u{0}"}})), false),
        ("shell", Some(json!({"command": "true", "timeout_ms": 0})), false),
    ];
    for (i, (tool, args, taken)) in cases.into_iter().enumerate() {
        let mut input = json!({"type": "tool_call", "tool": tool});
        if let Some(args) = args {
            input["args"] = args;
        }
        let arguments = json!({"id": format!("args-{i}"), "input": input, "disposition": "rerunnable"});
        assert_eq!(validator.is_valid(&arguments), taken, "the schema, of {arguments}");
        let result = call(&client, "process_start", arguments.clone())
            .await
            .expect("answered");
        assert_eq!(
            result.is_error == Some(false),
            taken,
            "the server, of {arguments}: {:?}",
            result.content
        );
    }
    // A tool the schema does not know keeps any args (the server says
    // whether it runs one).
    let other = json!({"id": "other", "input": {"type": "tool_call", "tool": "mine", "args": {"x": null}},
                       "disposition": "rerunnable"});
    assert!(validator.is_valid(&other));
    let _ = client.cancel().await;
}

/// Everything of the issue's "done when" list a host token does, over one transport.
async fn drive(transport: Transport) {
    let fx = server().await;
    let client = connect(&fx.server, transport, HOST).await;
    let info = client.peer_info().expect("initialize answered");
    assert_eq!(info.server_info.as_ref().map(|i| i.name.as_str()), Some("cairn"));
    assert!(
        info.protocol_version.as_str() >= "2025-06-18",
        "{}",
        info.protocol_version
    );
    assert!(info.capabilities.tools.is_some());
    let tools = tools(&client).await;
    check_tool_list(&tools);

    // echo: start, await, and read the log after a sequence.
    let started = ok(
        &client,
        &tools,
        "process_start",
        start_args("e1", "echo", json!({"value": {"hi": "mcp"}})),
    )
    .await;
    assert_eq!(started["id"], "e1");
    let done = ok(
        &client,
        &tools,
        "process_await",
        json!({"id": "e1", "timeout_ms": 20000}),
    )
    .await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["outcome"], json!({"type": "success", "value": {"hi": "mcp"}}));
    let again = ok(
        &client,
        &tools,
        "process_start",
        start_args("e1", "echo", json!({"value": {"hi": "mcp"}})),
    )
    .await;
    assert_eq!(
        again["status"], "completed",
        "a repeated start answers the existing record"
    );
    let all = ok(&client, &tools, "process_events", json!({"id": "e1"})).await;
    let seqs: Vec<u64> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert!(seqs.len() >= 2, "started and completed at least: {all}");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let after = ok(&client, &tools, "process_events", json!({"id": "e1", "after": 1})).await;
    let later: Vec<u64> = after["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(later, seqs[1..].to_vec(), "only events after sequence 1");

    // wait_signal: signalled while waiting, it ends with the payload.
    ok(
        &client,
        &tools,
        "process_start",
        start_args("w1", "wait_signal", json!({"name": "go"})),
    )
    .await;
    wait_until(&client, &tools, "w1", |r| !r["wait"].is_null()).await;
    let listed = ok(&client, &tools, "process_list", json!({"waiting": true})).await;
    assert!(listed["processes"].as_array().unwrap().iter().any(|p| p["id"] == "w1"));
    let signal = json!({"id": "w1", "name": "go", "signal_id": "sig-1", "payload": {"n": 7}});
    let event = ok(&client, &tools, "process_signal", signal.clone()).await;
    assert_eq!(event["event_type"], "signal.go");
    let repeated = ok(&client, &tools, "process_signal", signal).await;
    assert_eq!(
        repeated["sequence"], event["sequence"],
        "a repeated signal id is the same event"
    );
    let done = ok(
        &client,
        &tools,
        "process_await",
        json!({"id": "w1", "timeout_ms": 20000}),
    )
    .await;
    assert_eq!(done["outcome"], json!({"type": "success", "value": {"n": 7}}));

    // A child names its parent; `caused_by` lists the children.
    let mut kid = start_args("w1-kid", "echo", json!({"value": 1}));
    kid["caused_by"] = json!({"process_id": "w1"});
    ok(&client, &tools, "process_start", kid).await;
    let kids = ok(
        &client,
        &tools,
        "process_list",
        json!({"caused_by": "w1", "status": "any"}),
    )
    .await;
    let ids: Vec<&str> = kids["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(ids, ["w1-kid"]);
    // `order` is passed on: newest first, `w1-kid` (created after `w1`)
    // comes before it, and the page is by descending creation time, then id.
    let newest = ok(
        &client,
        &tools,
        "process_list",
        json!({"status": "any", "order": "newest"}),
    )
    .await;
    let listed: Vec<(u64, &str)> = newest["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["created_at_ms"].as_u64().unwrap(), p["id"].as_str().unwrap()))
        .collect();
    let mut by_time = listed.clone();
    by_time.sort_by(|a, b| b.cmp(a));
    assert_eq!(listed, by_time, "newest first");
    let at = |id: &str| listed.iter().position(|(_, p)| *p == id);
    assert!(at("w1-kid").is_some() && at("w1-kid") < at("w1"), "{listed:?}");

    // sleep: cancelled while it runs; an await shorter than the sleep answers it running.
    ok(
        &client,
        &tools,
        "process_start",
        start_args("s1", "sleep", json!({"ms": 600000})),
    )
    .await;
    wait_until(&client, &tools, "s1", |r| !r["wait"].is_null()).await;
    let result = call(&client, "process_await", json!({"id": "s1", "timeout_ms": 50}))
        .await
        .unwrap();
    assert_eq!(result.structured_content.as_ref().unwrap()["status"], "running");
    let hint = result
        .content
        .iter()
        .filter_map(|c| c.as_text())
        .map(|t| t.text.clone())
        .collect::<String>();
    assert!(hint.contains("call process_await again"), "says to call again: {hint}");
    ok(
        &client,
        &tools,
        "process_cancel",
        json!({"id": "s1", "reason": "no longer needed"}),
    )
    .await;
    let cancelled = ok(
        &client,
        &tools,
        "process_await",
        json!({"id": "s1", "timeout_ms": 20000}),
    )
    .await;
    assert_eq!(cancelled["status"], "cancelled");

    // external: completed through the tool; the same completion again
    // answers the record, another outcome is refused.
    let external =
        json!({"id": "x1", "input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"});
    ok(&client, &tools, "process_start", external).await;
    let outcome = json!({"type": "success", "value": 42});
    let ended = ok(
        &client,
        &tools,
        "process_complete",
        json!({"id": "x1", "outcome": outcome, "authority": "ci"}),
    )
    .await;
    assert_eq!(ended["status"], "completed");
    let again = ok(
        &client,
        &tools,
        "process_complete",
        json!({"id": "x1", "outcome": outcome, "authority": "ci"}),
    )
    .await;
    assert_eq!(again, ended);
    let other = json!({"type": "success", "value": 43});
    let (code, _) = err(
        &client,
        "process_complete",
        json!({"id": "x1", "outcome": other, "authority": "ci"}),
    )
    .await;
    assert_eq!(code, "process_terminal");

    // module_put stores a module (the same source again answers it) and names
    // a syntax error's line.
    let source = "export async function main(ctx) { return 1; }";
    let module = ok(&client, &tools, "module_put", json!({"source": source, "name": "m.js"})).await;
    assert!(module["module_ref"].as_str().unwrap().starts_with("module:sha256:"));
    assert_eq!(module["exports"], json!(["main"]));
    let again = ok(&client, &tools, "module_put", json!({"source": source})).await;
    assert_eq!(again, module);
    let (code, message) = err(&client, "module_put", json!({"source": "export async function (\n"})).await;
    assert_eq!(code, "invalid_module");
    assert!(message.contains("line"), "{message}");

    // A missing id is a tool error carrying cairn's code.
    for tool in ["process_get", "process_await", "process_events", "process_cancel"] {
        let (code, message) = err(&client, tool, json!({"id": "nope"})).await;
        assert_eq!(code, "unknown_process", "{tool}");
        assert!(message.contains("nope"), "{message}");
    }

    bad_input(&fx.server, &client, &tools, transport).await;

    // A pruned process answers `no_longer_retained` with its tombstone, as
    // the HTTP API's 410 body does.
    let host = fx.server.with_token(HOST);
    let (s, report) = host
        .post(
            "/v1/prune",
            json!({"cutoff_ms": u64::MAX / 2, "watermark": {"type": "no_projector"}}),
        )
        .await;
    assert_eq!(s, 200, "{report}");
    for tool in ["process_get", "process_await"] {
        let result = call(&client, tool, json!({"id": "e1"}))
            .await
            .expect("tools/call answered");
        assert_eq!(result.is_error, Some(true), "{tool}");
        let body: Value = serde_json::from_str(&result.content[0].as_text().expect("text").text).expect("JSON");
        assert_eq!(body["error"]["code"], "no_longer_retained", "{tool}: {body}");
        assert_eq!(body["error"]["tombstone"]["id"], "e1", "{tool}: {body}");
        assert_eq!(body["error"]["tombstone"]["status"], "completed", "{tool}: {body}");
    }
    let _ = client.cancel().await;
}

/// Bad input gets a clear error and changes nothing.
async fn bad_input(server: &Server, client: &McpClient, tools: &[Tool], transport: Transport) {
    // An unknown tool is a protocol error.
    match call(client, "process_delete", json!({"id": "x"})).await {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.code, ErrorCode::INVALID_PARAMS);
            assert!(e.message.contains("process_delete"), "{}", e.message);
        }
        other => panic!("unknown tool answered {other:?}"),
    }
    // Arguments outside the schema: unknown field, missing field, wrong type.
    let mut extra = start_args("bad1", "echo", json!({"value": 1}));
    extra["colour"] = json!("red");
    let (code, message) = err(client, "process_start", extra).await;
    assert_eq!(code, "invalid_request");
    assert!(message.contains("colour"), "{message}");
    let (code, message) = err(client, "process_signal", json!({"id": "w1", "name": "go"})).await;
    assert_eq!(code, "invalid_request");
    assert!(message.contains("signal_id"), "{message}");
    // A bad signal name is the same code on both transports.
    for name in ["", ".", "..", "a b"] {
        let (code, message) = err(
            client,
            "process_signal",
            json!({"id": "w1", "name": name, "signal_id": "bad"}),
        )
        .await;
        assert_eq!(code, "invalid_signal_name", "{name:?}: {message}");
    }
    // Inside a turn's session the field at fault is named.
    let turn = json!({"id": "bad-turn", "disposition": "rerunnable",
                      "input": {"type": "session_turn", "session": {"temperature": "hot"}, "input": "hi"}});
    let (code, message) = err(client, "process_start", turn).await;
    assert_eq!(code, "invalid_request");
    assert!(message.contains("`input.session.temperature`"), "{message}");
    let (code, _) = err(client, "process_events", json!({"id": "e1", "after": "first"})).await;
    assert_eq!(code, "invalid_request");
    // A nested object given as an array is refused, naming where, not read
    // by position (as over HTTP); nor is a type tag of the wrong JSON type.
    for (id, extra, said) in [
        (
            "arr1",
            json!({"wake_target": ["s1", "f1"]}),
            "`wake_target`: expected a JSON object, not an array",
        ),
        (
            "arr2",
            json!({"event_types": [["x.done", {}, {}]]}),
            "`event_types[0]`: expected a JSON object, not an array",
        ),
        (
            "arr3",
            json!({"grant": {"session_scope": ["s1"]}}),
            "`grant.session_scope`: expected a JSON object, not an array",
        ),
        (
            "tag1",
            json!({"input": {"type": 5}}),
            "`input.type`: invalid type: integer `5`, expected a string, one of `tool_call`",
        ),
        (
            "int1",
            json!({"input": {"type": "tool_call", "tool": "sleep", "args": {"ms": "5"}}}),
            "`sleep` args: `ms`: invalid type: string \"5\", expected a non-negative integer",
        ),
    ] {
        let mut start = start_args(id, "echo", json!({"value": 1}));
        start
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (code, message) = err(client, "process_start", start).await;
        assert_eq!(code, "invalid_request", "{id}: {message}");
        assert!(message.contains(said), "{id}: {message}");
        for rust in ["u64", "variant identifier", "struct"] {
            assert!(!message.contains(rust), "{id}: {message}");
        }
    }
    // A filter value the server does not know is its `invalid_filter`, as over HTTP.
    let (code, message) = err(client, "process_list", json!({"status": "bogus"})).await;
    assert_eq!(code, "invalid_filter");
    assert!(message.contains("bogus"), "{message}");
    let (code, message) = err(client, "process_list", json!({"order": "oldest"})).await;
    assert_eq!(code, "invalid_filter");
    assert!(message.contains("oldest"), "{message}");
    // So is an unknown key or a value of the wrong type, as over HTTP
    // (`?colour=red`, `?waiting=yes`).
    for bad in [json!({"colour": "red"}), json!({"waiting": "yes"})] {
        let (code, message) = err(client, "process_list", bad.clone()).await;
        assert_eq!(code, "invalid_filter", "{bad}: {message}");
    }
    // A created range that holds no time names both its keys, as over HTTP.
    let range = json!({"status": "any", "created_from_ms": 7, "created_before_ms": 7});
    let (code, message) = err(client, "process_list", range).await;
    assert_eq!(code, "invalid_filter", "{message}");
    assert!(
        message.contains("`created_from_ms`") && message.contains("`created_before_ms`"),
        "{message}"
    );
    // A page size that is no number is `invalid_page`, as over HTTP (`?limit=x`).
    let (code, message) = err(client, "process_list", json!({"limit": "x"})).await;
    assert_eq!(code, "invalid_page", "{message}");
    // A wait past what a signed 64-bit time holds is refused, as over HTTP.
    let (code, message) = err(
        client,
        "process_await",
        json!({"id": "e1", "timeout_ms": 18446744073709551615u64}),
    )
    .await;
    assert_eq!(code, "invalid_request", "{message}");
    assert!(message.contains("over the largest accepted value"), "{message}");
    let (code, _) = err(
        client,
        "process_start",
        json!({"id": "bad2", "input": {"type": "tool_call", "tool": "echo", "args": {}}, "disposition": "forever"}),
    )
    .await;
    assert_eq!(code, "invalid_request");
    // An input over cairn's payload limit (but under the request limit).
    let big = "x".repeat(1_200_000);
    let (code, _) = err(
        client,
        "process_start",
        start_args("big1", "echo", json!({"value": big})),
    )
    .await;
    assert_eq!(code, "payload_too_large");
    // Arguments over the request limit.
    let huge = "x".repeat(3 * 1024 * 1024);
    match (
        transport,
        call(
            client,
            "process_start",
            start_args("big2", "echo", json!({"value": huge})),
        )
        .await,
    ) {
        // stdio: the tool refuses them.
        (Transport::Stdio, Ok(r)) => {
            assert_eq!(r.is_error, Some(true));
            let text = &r.content[0].as_text().unwrap().text;
            assert!(text.contains("payload_too_large"), "{text}");
        }
        // HTTP: the request is refused before it reaches a tool (a
        // JSON-RPC error carrying its id, or, refused before routing, the
        // bare status).
        (Transport::Http, Err(e)) => assert!(
            e.to_string().contains("over the server's limit") || e.to_string().contains("413"),
            "{e}"
        ),
        (_, other) => panic!("oversized arguments answered {other:?}"),
    }
    // A refused HTTP request may end the client's transport: check from a fresh one.
    let checker = connect(server, transport, HOST).await;
    for id in ["bad1", "bad2", "big1", "big2", "arr1", "arr2", "arr3", "tag1", "int1"] {
        let (code, _) = err(&checker, "process_get", json!({"id": id})).await;
        assert_eq!(code, "unknown_process", "{id} was not created");
    }
    let w1 = ok(&checker, tools, "process_get", json!({"id": "w1"})).await;
    assert_eq!(w1["status"], "completed");
    let events = ok(&checker, tools, "process_events", json!({"id": "w1"})).await;
    let signals = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "signal.go")
        .count();
    assert_eq!(signals, 1, "the malformed signal changed nothing");
    checker.cancel().await.expect("close the checker");
}

#[tokio::test]
async fn streamable_http_drives_processes() {
    drive(Transport::Http).await;
}

#[tokio::test]
async fn stdio_drives_processes() {
    drive(Transport::Stdio).await;
}

/// A session token sees only what its session may address: another session's
/// process answers exactly like a missing one, over both transports.
async fn session_isolation(transport: Transport) {
    let fx = server().await;
    let s1 = connect(&fx.server, transport, S1).await;
    let s2 = connect(&fx.server, transport, S2).await;
    let tools = tools(&s1).await;
    ok(
        &s1,
        &tools,
        "process_start",
        start_args("mine", "wait_signal", json!({"name": "go"})),
    )
    .await;
    wait_until(&s1, &tools, "mine", |r| !r["wait"].is_null()).await;

    let calls = [
        ("process_get", json!({})),
        ("process_events", json!({"after": 0})),
        ("process_await", json!({"timeout_ms": 10})),
        ("process_signal", json!({"name": "go", "signal_id": "x", "payload": 1})),
        // A bad name too: visibility is checked first, over stdio as over
        // `/mcp` (the forwarder does not check the name before sending).
        ("process_signal", json!({"name": "bad.name", "signal_id": "x"})),
        ("process_cancel", json!({"reason": "not yours"})),
        (
            "process_complete",
            json!({"outcome": {"type": "success", "value": 1}, "authority": "s2"}),
        ),
    ];
    for (tool, extra) in calls {
        let with_id = |id: &str| {
            let mut a = extra.clone();
            a["id"] = json!(id);
            a
        };
        let (theirs_code, theirs_message) = err(&s2, tool, with_id("mine")).await;
        let (missing_code, missing_message) = err(&s2, tool, with_id("absent")).await;
        assert_eq!(theirs_code, "unknown_process", "{tool}");
        assert_eq!(theirs_code, missing_code, "{tool}");
        assert_eq!(
            theirs_message.replace("mine", "ID"),
            missing_message.replace("absent", "ID"),
            "{tool}"
        );
    }
    let listed = ok(&s2, &tools, "process_list", json!({"status": "any"})).await;
    assert_eq!(listed["processes"], json!([]), "s2 lists nothing of s1");
    let (code, _) = err(&s2, "process_list", json!({"granted_to": "s1"})).await;
    assert_eq!(code, "forbidden", "naming s1 is refused, as its wakes are");

    // Nothing s2 tried changed s1's process: it still waits, unsignalled.
    let record = ok(&s1, &tools, "process_get", json!({"id": "mine"})).await;
    assert_eq!(record["status"], "running");
    assert!(!record["wait"].is_null());
    let events = ok(&s1, &tools, "process_events", json!({"id": "mine"})).await;
    assert!(events["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["event_type"] != "signal.go"));
    let listed = ok(&s1, &tools, "process_list", json!({})).await;
    assert_eq!(listed["processes"].as_array().unwrap().len(), 1);
    s1.cancel().await.unwrap();
    s2.cancel().await.unwrap();
}

#[tokio::test]
async fn streamable_http_session_token_sees_only_its_session() {
    session_isolation(Transport::Http).await;
}

#[tokio::test]
async fn stdio_session_token_sees_only_its_session() {
    session_isolation(Transport::Stdio).await;
}

/// A session's own pruned process answers its tools as it answers the host:
/// `no_longer_retained` with the tombstone; another session's pruned process
/// answers it as a missing one, with no tombstone.
#[tokio::test]
async fn a_sessions_own_pruned_process_is_no_longer_retained() {
    let fx = server().await;
    let s1 = connect(&fx.server, Transport::Http, S1).await;
    let s2 = connect(&fx.server, Transport::Http, S2).await;
    let tools = tools(&s1).await;
    let external = json!({"id": "mine", "input": {"type": "external"}, "disposition": "externally_owned"});
    ok(&s1, &tools, "process_start", external).await;
    let done = json!({"id": "mine", "outcome": {"type": "success", "value": 1}, "authority": "s1"});
    ok(&s1, &tools, "process_complete", done).await;
    let (s, rep) = fx
        .server
        .with_token(HOST)
        .post(
            "/v1/prune",
            json!({"cutoff_ms": u64::MAX / 2, "watermark": {"type": "no_projector"}}),
        )
        .await;
    assert_eq!((s, rep["pruned"].as_u64()), (200, Some(1)), "{rep}");
    let calls = [
        ("process_get", json!({})),
        ("process_events", json!({"after": 0})),
        ("process_await", json!({"timeout_ms": 10})),
        ("process_signal", json!({"name": "go", "signal_id": "x", "payload": 1})),
        ("process_cancel", json!({"reason": "late"})),
        (
            "process_complete",
            json!({"outcome": {"type": "success", "value": 1}, "authority": "s1"}),
        ),
    ];
    for (tool, mut arguments) in calls {
        arguments["id"] = json!("mine");
        let mut bodies = Vec::new();
        for client in [&s1, &s2] {
            let result = call(client, tool, arguments.clone())
                .await
                .expect("tools/call answered");
            assert_eq!(result.is_error, Some(true), "{tool}");
            let text = &result.content[0].as_text().expect("text content").text;
            bodies.push(serde_json::from_str::<Value>(text).expect("error body is JSON"));
        }
        let (own, other) = (&bodies[0]["error"], &bodies[1]["error"]);
        assert_eq!(own["code"], "no_longer_retained", "{tool}: {own}");
        assert_eq!(own["tombstone"]["id"], "mine", "{tool}: {own}");
        assert_eq!(own["tombstone"]["status"], "completed", "{tool}: {own}");
        assert_eq!(other["code"], "unknown_process", "{tool}: {other}");
        assert!(other.get("tombstone").is_none(), "{tool}: {other}");
    }
    // Its start repeated is told so too; the other's is only "taken". Its
    // own pruned process is a parent; the other's is missing.
    let start = json!({"id": "mine", "input": {"type": "external"}, "disposition": "externally_owned"});
    let mut bodies = Vec::new();
    for client in [&s1, &s2] {
        let result = call(client, "process_start", start.clone()).await.expect("answered");
        assert_eq!(result.is_error, Some(true));
        let text = &result.content[0].as_text().expect("text content").text;
        bodies.push(serde_json::from_str::<Value>(text).expect("error body is JSON"));
    }
    let (own, other) = (&bodies[0]["error"], &bodies[1]["error"]);
    assert_eq!(own["code"], "no_longer_retained", "{own}");
    assert_eq!(own["tombstone"]["status"], "completed", "{own}");
    assert_eq!(other["code"], "registration_conflict", "{other}");
    assert!(other.get("tombstone").is_none(), "{other}");
    let child = |id: &str| {
        json!({"id": id, "input": {"type": "external"}, "disposition": "externally_owned",
               "caused_by": {"process_id": "mine"}})
    };
    ok(&s1, &tools, "process_start", child("kid")).await;
    let result = call(&s2, "process_start", child("stray")).await.expect("answered");
    assert_eq!(result.is_error, Some(true));
    let text = &result.content[0].as_text().expect("text content").text;
    let refused: Value = serde_json::from_str(text).expect("error body is JSON");
    assert_eq!(refused["error"]["code"], "invalid_request", "{refused}");
    s1.cancel().await.unwrap();
    s2.cancel().await.unwrap();
}

/// Schedules over MCP: the host lists, pauses and resumes them with the HTTP
/// API's answers and errors; a session token is refused as over HTTP.
async fn schedules(transport: Transport) {
    let fx = server().await;
    let http = fx.server.with_token(HOST);
    for id in ["daily", "hourly"] {
        let (status, _) = http
            .post(
                "/v1/schedules",
                json!({
                    "id": id,
                    "every": if id == "daily" { "24h" } else { "1h" },
                    "start": {"input": {"type": "tool_call", "tool": "echo", "args": {"value": id}},
                              "disposition": "rerunnable"},
                    "overlap": "skip",
                }),
            )
            .await;
        assert_eq!(status, 201);
    }
    let host = connect(&fx.server, transport, HOST).await;
    let tools = tools(&host).await;

    let page = ok(&host, &tools, "schedule_list", json!({})).await;
    let ids: Vec<&str> = page["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["daily", "hourly"]);
    let (_, over_http) = http.get("/v1/schedules").await;
    assert_eq!(page, over_http, "the HTTP API's page");
    let first = ok(&host, &tools, "schedule_list", json!({"limit": 1})).await;
    assert_eq!(first["schedules"][0]["id"], "daily");
    assert_eq!(first["next_after"], "daily");
    let rest = ok(&host, &tools, "schedule_list", json!({"after": "daily"})).await;
    assert_eq!(rest["schedules"].as_array().unwrap().len(), 1);
    assert_eq!(rest["schedules"][0]["id"], "hourly");

    let paused = ok(&host, &tools, "schedule_pause", json!({"id": "hourly"})).await;
    assert_eq!(paused["paused"], true);
    let (_, stored) = http.get("/v1/schedules/hourly").await;
    assert_eq!(stored["paused"], true, "the pause is stored");
    let again = ok(&host, &tools, "schedule_pause", json!({"id": "hourly"})).await;
    assert_eq!(again["paused"], true, "pausing twice answers the paused schedule");
    let resumed = ok(&host, &tools, "schedule_resume", json!({"id": "hourly"})).await;
    assert_eq!(resumed["paused"], false);
    assert!(resumed["next_fire_ms"].as_u64().unwrap() > paused["created_ms"].as_u64().unwrap());
    let (_, stored) = http.get("/v1/schedules/hourly").await;
    assert_eq!(stored["paused"], false, "the resume is stored");

    for tool in ["schedule_pause", "schedule_resume"] {
        let (code, message) = err(&host, tool, json!({"id": "nope"})).await;
        let (status, body) = http
            .post(&format!("/v1/schedules/nope/{}", &tool[9..]), json!({}))
            .await;
        assert_eq!(status, 404);
        assert_eq!(
            (code.as_str(), message.as_str()),
            (
                body["error"]["code"].as_str().unwrap(),
                body["error"]["message"].as_str().unwrap()
            )
        );
        assert_eq!(code, "unknown_schedule");
        let (code, _) = err(&host, tool, json!({})).await;
        assert_eq!(code, "invalid_request", "{tool} needs an id");
    }
    let (code, message) = err(&host, "schedule_list", json!({"limit": 0})).await;
    let (status, body) = http.get("/v1/schedules?limit=0").await;
    assert_eq!(status, 400);
    assert_eq!(code, body["error"]["code"].as_str().unwrap(), "{message}");

    // A session token: not offered the schedule tools, refused as over HTTP
    // when it calls them all the same, and nothing changes.
    let s1 = connect(&fx.server, transport, S1).await;
    let offered: Vec<String> = s1
        .list_all_tools()
        .await
        .expect("tools/list")
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(offered.iter().all(|t| !t.starts_with("schedule_")), "{offered:?}");
    assert!(offered.iter().any(|t| t == "process_start"), "{offered:?}");
    assert!(
        tools.iter().any(|t| t.name == "schedule_list"),
        "the host is offered them"
    );
    for (tool, arguments) in [
        ("schedule_list", json!({})),
        ("schedule_pause", json!({"id": "daily"})),
        ("schedule_resume", json!({"id": "daily"})),
    ] {
        let (code, _) = err(&s1, tool, arguments).await;
        assert_eq!(code, "forbidden", "{tool}");
    }
    let (status, _) = fx.server.with_token(S1).get("/v1/schedules").await;
    assert_eq!(status, 403, "the HTTP API refuses it the same way");
    let (_, stored) = http.get("/v1/schedules/daily").await;
    assert_eq!(stored["paused"], false, "the refused pause changed nothing");
    host.cancel().await.unwrap();
    s1.cancel().await.unwrap();
}

#[tokio::test]
async fn streamable_http_schedules() {
    schedules(Transport::Http).await;
}

#[tokio::test]
async fn stdio_schedules() {
    schedules(Transport::Stdio).await;
}

#[tokio::test]
async fn streamable_http_needs_a_token() {
    let fx = server().await;
    let config = StreamableHttpClientTransportConfig::with_uri(fx.server.url("/mcp"));
    let refused = ().serve(StreamableHttpClientTransport::from_config(config)).await;
    assert!(refused.is_err(), "initialize without a token must fail");
    let config = StreamableHttpClientTransportConfig::with_uri(fx.server.url("/mcp")).auth_header("wrong");
    let refused = ().serve(StreamableHttpClientTransport::from_config(config)).await;
    assert!(refused.is_err(), "initialize with an unknown token must fail");
}

/// As crates/cairn/README.md says: who may ask is decided before MCP and
/// refused with the HTTP API's error body (401, 403), which an MCP client
/// acts on by its status; what is wrong with a message is a JSON-RPC error.
#[tokio::test]
async fn auth_refusals_on_mcp_keep_the_http_apis_body() {
    let fx = server().await;
    let post = |token: Option<&str>, content_type: &str, cross_site: bool| {
        let mut request = reqwest::Client::new()
            .post(fx.server.url("/mcp"))
            .header("Content-Type", content_type)
            .header("Accept", "application/json, text/event-stream")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if cross_site {
            request = request.header("Sec-Fetch-Site", "cross-site");
        }
        async move {
            let response = request.send().await.expect("answered");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("a JSON body"))
        }
    };
    const JSON: &str = "application/json";
    for (token, cross_site, status, code) in [
        (None, false, 401, "unauthorized"),
        (Some("wrong"), false, 401, "unauthorized"),
        (Some(HOST), true, 403, "forbidden"),
    ] {
        let (got, body) = post(token, JSON, cross_site).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body.get("jsonrpc").is_none(), "{body}");
    }
    let (got, body) = post(Some(HOST), "text/plain", false).await;
    assert_eq!(got, 415, "{body}");
    assert_eq!(body["error"]["code"], -32600, "{body}");
    assert_eq!(post(Some(HOST), JSON, false).await.1["result"], json!({}));
}

#[tokio::test]
async fn streamable_http_on_an_open_loopback_server() {
    // No token configured: open access on loopback, where the endpoint still checks `Host`.
    let server = Server::start(&[]).await;
    let client = ().serve(StreamableHttpClientTransport::from_uri(server.url("/mcp"))).await.expect("initialize");
    let tools = tools(&client).await;
    ok(
        &client,
        &tools,
        "process_start",
        start_args("open-1", "echo", json!({"value": 1})),
    )
    .await;
    let done = ok(
        &client,
        &tools,
        "process_await",
        json!({"id": "open-1", "timeout_ms": 20000}),
    )
    .await;
    assert_eq!(done["outcome"]["value"], 1);
    let _ = client.cancel().await;
    // A page on another origin that rebinds its name to 127.0.0.1 is refused.
    let response = reqwest::Client::new()
        .post(server.url("/mcp"))
        .header("Host", "attacker.example")
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 403);
    // A message refused for its headers (here its protocol version) is
    // answered with its own id: the body was read.
    let response = reqwest::Client::new()
        .post(server.url("/mcp"))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "bogus")
        .body(r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("a JSON-RPC error");
    assert_eq!(body["id"], 7, "{body}");
    assert_eq!(body["error"]["code"], -32600, "{body}");
}

#[tokio::test]
async fn stdio_reports_an_unreachable_server_as_a_tool_error() {
    // Port 1 on loopback: nothing listens there.
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["mcp", "--server", "http://127.0.0.1:1"])
        .env_remove("CAIRN_TOKEN")
        .env("RUST_LOG", "off");
    let client = ().serve(TokioChildProcess::new(cmd).expect("spawn")).await.expect("initialize");
    let (code, message) = err(&client, "process_get", json!({"id": "any"})).await;
    assert_eq!(code, "unavailable");
    assert!(message.contains("cannot reach"), "{message}");
    // With what the CLI would suggest.
    assert!(message.contains("is `cairn serve` running at"), "{message}");
    let _ = client.cancel().await;
}

/// `cairn mcp` says on stderr, as it starts, that its server does not answer
/// (it said nothing until the first tool call), and serves all the same.
#[tokio::test]
async fn stdio_says_at_once_that_its_server_does_not_answer() {
    use tokio::io::AsyncBufReadExt;
    let mut child = raw_stdio(true);
    let mut err = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), err.next_line())
        .await
        .expect("said in time")
        .expect("read")
        .expect("a line");
    assert!(
        line.starts_with("cairn mcp: the server does not answer as it should") && line.contains("cairn serve"),
        "{line}"
    );
    assert!(child.try_wait().expect("status").is_none(), "still serving");
}

/// Over stdio, a write whose request reached the server and whose answer
/// was lost (the connection closed before it) is `outcome_unknown`: it may
/// have been done, so the model reads before it retries; not `unavailable`,
/// which says nothing was done.
#[tokio::test]
async fn stdio_reports_a_lost_answer_to_a_write_as_outcome_unknown() {
    // Reads each request's head, then hangs up without a word.
    let (port, stub) = stub_server(None).await;
    let client = stdio_client(port).await;
    let (code, message) = err(&client, "process_cancel", json!({"id": "any"})).await;
    assert_eq!(code, "outcome_unknown", "{message}");
    assert!(message.contains("read the state"), "{message}");
    let _ = client.cancel().await;
    stub.abort();
}

/// The same for a proxy before the server answering 502 once the request
/// went out: a write is `outcome_unknown`; a read, which changes nothing,
/// `unavailable`.
#[tokio::test]
async fn stdio_reports_a_proxys_502_to_a_write_as_outcome_unknown() {
    let page = "<html>bad gateway</html>";
    let answer = format!(
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
        page.len()
    );
    // Reads each request's head, then answers as a proxy whose server died.
    let (port, stub) = stub_server(Some(answer)).await;
    let client = stdio_client(port).await;
    let (code, message) = err(&client, "process_cancel", json!({"id": "any"})).await;
    assert_eq!(code, "outcome_unknown", "{message}");
    let (code, message) = err(&client, "process_get", json!({"id": "any"})).await;
    assert_eq!(code, "unavailable", "{message}");
    let _ = client.cancel().await;
    stub.abort();
}

/// `cairn mcp` over stdio, its lines read and written by the test, against a
/// server address where nothing listens; its stderr piped when asked.
fn raw_stdio(stderr: bool) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["mcp", "--server", "http://127.0.0.1:1"])
        .env_remove("CAIRN_TOKEN")
        .env("RUST_LOG", "off")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    if stderr {
        cmd.stderr(std::process::Stdio::piped());
    }
    cmd.spawn().expect("spawn cairn mcp")
}

/// A stand-in for a server on a free loopback port: it reads each request's
/// head, then writes `answer` (if any) and hangs up.
async fn stub_server(answer: Option<String>) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stub = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            if let Some(answer) = &answer {
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        }
    });
    (port, stub)
}

/// `cairn mcp` over stdio, forwarding to a server on `port` of loopback.
async fn stdio_client(port: u16) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["mcp", "--server", &format!("http://127.0.0.1:{port}")])
        .env_remove("CAIRN_TOKEN")
        .env("RUST_LOG", "off");
    ().serve(TokioChildProcess::new(cmd).expect("spawn"))
        .await
        .expect("initialize")
}

/// A POST that is not JSON, or not one JSON-RPC 2.0 message, is answered
/// 400 with the JSON-RPC error a client can read: `-32700` parse error,
/// `-32600` invalid request (the id echoed when it is one).
#[tokio::test]
async fn malformed_posts_get_jsonrpc_errors() {
    let server = Server::start(&[]).await;
    let post = |body: &'static str| {
        reqwest::Client::new()
            .post(server.url("/mcp"))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(body)
            .send()
    };
    for (body, code, id) in [
        ("not json", -32700, Value::Null),
        ("{\"jsonrpc\": \"2.0\", \"id\": 1, ", -32700, Value::Null),
        ("{}", -32600, Value::Null),
        ("[]", -32600, Value::Null),
        (
            r#"{"jsonrpc": "1.0", "id": 7, "method": "tools/list"}"#,
            -32600,
            json!(7),
        ),
        (
            r#"{"jsonrpc": "2.0", "id": {"a": 1}, "method": "tools/list"}"#,
            -32600,
            Value::Null,
        ),
        // MCP: an id is never null; JSON-RPC: never fractional.
        (
            r#"{"jsonrpc": "2.0", "id": null, "method": "ping"}"#,
            -32600,
            Value::Null,
        ),
        (
            r#"{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}"#,
            -32600,
            Value::Null,
        ),
        (
            r#"{"jsonrpc": "2.0", "id": 18446744073709551615, "method": "ping"}"#,
            -32600,
            Value::Null,
        ),
        (r#"{"jsonrpc": "2.0", "id": 5}"#, -32600, json!(5)),
        (
            r#"{"jsonrpc": "2.0", "id": 1e16, "method": "ping"}"#,
            -32600,
            Value::Null,
        ),
        (r#"{"jsonrpc": "2.0", "id": 5, "method": 7}"#, -32600, json!(5)),
        (
            r#"{"jsonrpc": "2.0", "id": "a", "method": "tools/call", "params": "x"}"#,
            -32600,
            json!("a"),
        ),
        (
            r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": []}"#,
            -32602,
            json!(1),
        ),
    ] {
        let response = post(body).await.expect("answered");
        assert_eq!(response.status().as_u16(), 400, "{body}");
        let answer: Value = response.json().await.expect("a JSON body");
        assert_eq!(answer["jsonrpc"], "2.0", "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert_eq!(answer["id"], id, "{body}: {answer}");
        // Says what a field must be, and what it was given.
        if body.contains(r#""params": "x""#) {
            let message = answer["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("`params` must be an object") && message.contains("not a string"),
                "{answer}"
            );
        }
    }
    // Params that do not fit a method MCP defines are invalid params, not an
    // unknown method; an unknown method is one; tools/list gives no cursors.
    for (body, code) in [
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"process_get","arguments":[1]}}"#,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":5}}"#,
            -32602,
        ),
        (r#"{"jsonrpc":"2.0","id":2,"method":"tools/call"}"#, -32602),
        (r#"{"jsonrpc":"2.0","id":2,"method":"initialize","params":{}}"#, -32602),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":"bogus"}}"#,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":5}}"#,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":{}}}"#,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"no/such/method","params":{}}"#,
            -32601,
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"process_get","arguments":{"id":"x"},"_meta":"str"}}"#,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"ping","params":{"_meta":5}}"#,
            -32602,
        ),
    ] {
        let answer: Value = post(body).await.expect("answered").json().await.expect("a JSON body");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert_eq!(answer["id"], 2, "{body}: {answer}");
    }
    // A refusal says what was given, beside what is taken.
    for (body, said) in [
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":5}}"#,
            "not a number",
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"ping","params":{"_meta":"str"}}"#,
            "not a string",
        ),
        (r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#, "it is null"),
        (
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            "1.5, a number with a fraction",
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":5}}"#,
            r#"given {"name":5}"#,
        ),
    ] {
        let answer: Value = post(body).await.expect("answered").json().await.expect("a JSON body");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(said), "{body}: {answer}");
    }
    // An integral id written with an exponent is an integer id.
    let answer: Value = post(r#"{"jsonrpc":"2.0","id":1e3,"method":"ping"}"#)
        .await
        .expect("answered")
        .json()
        .await
        .expect("a JSON body");
    assert!(answer.get("error").is_none(), "{answer}");
    // What the endpoint refuses before reading a message (another method, a
    // body that is not JSON, an Accept it cannot answer) is a JSON-RPC error
    // too, with the endpoint's reason and status.
    let http = reqwest::Client::new();
    let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    for (request, status) in [
        (http.get(server.url("/mcp")).header("Accept", "text/event-stream"), 405),
        (http.delete(server.url("/mcp")), 405),
        (
            http.post(server.url("/mcp"))
                .header("Content-Type", "application/json")
                .header("Accept", "application/json")
                .body(initialize),
            406,
        ),
        (
            http.post(server.url("/mcp"))
                .header("Content-Type", "text/plain")
                .header("Accept", "application/json, text/event-stream")
                .body(initialize),
            415,
        ),
    ] {
        let response = request.send().await.expect("answered");
        assert_eq!(response.status().as_u16(), status);
        let answer: Value = response.json().await.expect("a JSON body");
        assert_eq!(answer["jsonrpc"], "2.0", "{status}: {answer}");
        assert_eq!(answer["error"]["code"], -32600, "{status}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or("");
        let says = match status {
            405 => "takes POST",
            406 => "accept both application/json and text/event-stream",
            _ => "sent as JSON, with `Content-Type: application/json`",
        };
        assert!(message.contains(says), "{status}: {answer}");
    }
    // A key given twice in the message (outside a call's arguments) is
    // refused, as the HTTP API refuses it, and nothing is done: not the
    // first value, not the last. (In the arguments it is the tool's error:
    // `a_fault_in_a_calls_arguments_is_a_tool_error`.)
    let twice = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"process_start","name":"process_start","arguments":{"id":"twice-a","disposition":"rerunnable","input":{"type":"external"}}}}"#;
    let response = post(twice).await.expect("answered");
    assert_eq!(response.status().as_u16(), 400);
    let answer: Value = response.json().await.expect("a JSON body");
    assert_eq!(
        (answer["id"].clone(), answer["error"]["code"].clone()),
        (json!(9), json!(-32600)),
        "{answer}"
    );
    assert!(
        answer["error"]["message"].as_str().is_some_and(|m| m.contains("twice")),
        "{answer}"
    );
    for id in ["twice-a", "twice-b"] {
        let status = reqwest::get(server.url(&format!("/v1/processes/{id}")))
            .await
            .expect("get")
            .status();
        assert_eq!(status.as_u16(), 404, "{id}");
    }
    // A well-formed message still reaches the endpoint.
    let response = post(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#)
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 200);
}

/// Over stdio, a line that is not JSON, or not one JSON-RPC 2.0 message, is
/// answered with its JSON-RPC error (the id echoed when it is one), as over
/// HTTP, instead of being dropped unanswered; good lines around it still work.
#[tokio::test]
async fn stdio_answers_malformed_lines() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut child = raw_stdio(false);
    let mut stdin = child.stdin.take().expect("stdin");
    let lines = [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
        "not json",
        "[1]",
        r#"{"jsonrpc": "1.0", "id": 3, "method": "ping"}"#,
        r#"{"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": "x"}"#,
        r#"{"jsonrpc": "2.0", "id": 5, "method": "ping"}"#,
        // A key given twice is refused, as the HTTP API refuses it.
        r#"{"jsonrpc": "2.0", "id": 7, "method": "ping", "method": "tools/list"}"#,
        // An id past 2^53 no client library matches exactly.
        r#"{"jsonrpc": "2.0", "id": 1e16, "method": "ping"}"#,
        // A `_meta` that is no object is answered with the request's id;
        // `null` is none.
        r#"{"jsonrpc": "2.0", "id": 8, "method": "ping", "params": {"_meta": "str"}}"#,
        r#"{"jsonrpc": "2.0", "id": 9, "method": "ping", "params": {"_meta": null}}"#,
    ];
    for line in lines {
        stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write");
    }
    // Bytes that are not UTF-8 are that line's parse error, and the lines
    // after it are still read. A notification with faulty params is never
    // answered, whatever is wrong with them (an answer to it would stand
    // among the counted ones).
    stdin
        .write_all(b"{\"jsonrpc\": \"2.0\", \"id\": \"\xff\"}\n")
        .await
        .expect("write");
    stdin
        .write_all(b"{\"jsonrpc\": \"2.0\", \"method\": \"notifications/progress\", \"params\": [1]}\n")
        .await
        .expect("write");
    stdin
        .write_all(b"{\"jsonrpc\": \"2.0\", \"method\": \"notifications/progress\", \"params\": \"x\"}\n")
        .await
        .expect("write");
    stdin
        .write_all(b"{\"jsonrpc\": \"2.0\", \"id\": 6, \"method\": \"ping\"}\n")
        .await
        .expect("write");
    stdin.flush().await.expect("flush");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut answers = Vec::new();
    while answers.len() < lines.len() + 2 {
        let line = tokio::time::timeout(Duration::from_secs(10), out.next_line())
            .await
            .expect("answered in time")
            .expect("read")
            .expect("a line per message");
        let answer: Value = serde_json::from_str(&line).expect("a JSON line");
        answers.push((answer["id"].clone(), answer["error"]["code"].clone()));
        if answer["id"] == 1 {
            stdin
                .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
                .await
                .expect("write");
        }
    }
    answers.sort_by_key(|(id, code)| (id.to_string(), code.to_string()));
    assert_eq!(
        answers,
        [
            (json!(1), Value::Null),
            (json!(3), json!(-32600)),
            (json!(4), json!(-32600)),
            (json!(5), Value::Null),
            (json!(6), Value::Null),
            (json!(7), json!(-32600)),
            (json!(8), json!(-32602)),
            (json!(9), Value::Null),
            (Value::Null, json!(-32600)),
            (Value::Null, json!(-32600)),
            (Value::Null, json!(-32700)),
            (Value::Null, json!(-32700)),
        ]
    );
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits when its input ends")
        .expect("status");
    assert!(status.success(), "{status}");
}

/// A line longer than the protocol library reads (it would drop it
/// unanswered, and the end of input would then wait for it) and a message
/// nested past what a parser reads are answered by the id their start
/// shows; the lines after them are read, and the end of input is not held.
#[tokio::test]
async fn stdio_answers_a_line_too_long_and_a_message_nested_too_deep() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut child = raw_stdio(false);
    let mut stdin = child.stdin.take().expect("stdin");
    let long = format!(
        r#"{{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{{"name":"process_get","arguments":{{"id":"{}"}}}}}}"#,
        "x".repeat(17 << 20)
    );
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":"deep","method":"tools/call","params":{{"name":"process_get","arguments":{{"id":{}1{}}}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let lines = [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#.to_string(),
        long,
        deep,
        r#"{"jsonrpc":"2.0","id":10,"method":"ping"}"#.to_string(),
    ];
    let writing = tokio::spawn(async move {
        for line in lines {
            stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write");
        }
        stdin.flush().await.expect("flush");
        stdin
    });
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut answers = Vec::new();
    while answers.len() < 4 {
        let line = tokio::time::timeout(Duration::from_secs(20), out.next_line())
            .await
            .expect("answered in time")
            .expect("read")
            .expect("a line per message");
        let answer: Value = serde_json::from_str(&line).expect("a JSON line");
        answers.push((answer["id"].clone(), answer["error"]["code"].clone()));
    }
    answers.sort_by_key(|(id, code)| (id.to_string(), code.to_string()));
    assert_eq!(
        answers,
        [
            (json!("deep"), json!(-32600)),
            (json!(1), Value::Null),
            (json!(10), Value::Null),
            (json!(8), json!(-32600)),
        ]
    );
    drop(writing.await.expect("writer"));
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits when its input ends, waiting for nothing")
        .expect("status");
    assert!(status.success(), "{status}");
}

/// Input that ends before any message (a client that connected and left, or
/// `cairn mcp < /dev/null`) ends `cairn mcp` quietly with 0; an input whose
/// first message is not an `initialize` is a failed initialization, exit 2.
#[tokio::test]
async fn stdio_input_that_ends_before_a_message_exits_zero() {
    for (input, code) in [
        ("", 0),
        ("\n\n", 0),
        ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n", 2),
        ("not json\n", 2),
    ] {
        let out = common::run_cli("http://127.0.0.1:1", None, &["mcp"], Some(input)).await;
        assert_eq!(out.code, code, "{input:?}: {}", out.stderr);
    }
    // A request before `initialize` is told so, by its id (the protocol
    // library spoke of per-request `_meta` fields), and the handshake that
    // follows goes on: a `ping` before it is served, as MCP allows.
    let input = [
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":6,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#,
        "",
    ]
    .join("\n");
    let out = common::run_cli("http://127.0.0.1:1", None, &["mcp"], Some(&input)).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let answers: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let by_id = |id: i64| {
        answers
            .iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("{id}: {answers:?}"))
    };
    assert_eq!(by_id(4)["error"]["code"], -32600);
    assert_eq!(
        by_id(4)["error"]["message"],
        "invalid request: send `initialize` (MCP's handshake) before `tools/list`"
    );
    assert_eq!(by_id(5)["result"], json!({}));
    assert!(by_id(6)["result"]["protocolVersion"].is_string(), "{answers:?}");
    assert!(by_id(7)["result"]["tools"].is_array(), "{answers:?}");
}

/// Over stdio, a notification or a response before `initialize` (a client's
/// early `notifications/initialized`, a stray one) is dropped unanswered, as
/// JSON-RPC has it, and the handshake after it goes on: it ended `cairn mcp`
/// with a failed initialization. So is one after a request the protocol
/// library refuses during its handshake (a revision this server does not
/// speak, the client's capabilities left out); one after a request that
/// names its revision reaches the session that request opened.
#[tokio::test]
async fn stdio_drops_notifications_and_responses_before_initialize() {
    let versioned = |id: i64, version: &str, capabilities: bool| {
        let mut meta = json!({"io.modelcontextprotocol/protocolVersion": version});
        if capabilities {
            meta["io.modelcontextprotocol/clientCapabilities"] = json!({});
        }
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": {"_meta": meta}}).to_string()
    };
    let initialize = r#"{"jsonrpc":"2.0","id":6,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let stray = [
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","method":"foo/bar"}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":9}}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        r#"{"jsonrpc":"2.0","id":"r","error":{"code":-1,"message":"no"}}"#,
    ];
    let mut lines: Vec<String> = stray.iter().map(|l| l.to_string()).collect();
    lines.push(versioned(2, "2024-11-05", true));
    lines.extend(stray.iter().map(|l| l.to_string()));
    lines.push(versioned(3, "2026-07-28", false));
    lines.extend(stray.iter().map(|l| l.to_string()));
    lines.extend([
        initialize.to_string(),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#.to_string(),
        String::new(),
    ]);
    let out = common::run_cli("http://127.0.0.1:1", None, &["mcp"], Some(&lines.join("\n"))).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("initialization failed"), "{}", out.stderr);
    let answers: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let ids: Vec<&Value> = answers.iter().map(|a| &a["id"]).collect();
    assert_eq!(ids, [&json!(2), &json!(3), &json!(6), &json!(7)], "{answers:?}");
    assert!(answers[0]["error"]["code"].is_i64(), "{answers:?}");
    assert!(answers[1]["error"]["code"].is_i64(), "{answers:?}");
    assert!(answers[2]["result"]["protocolVersion"].is_string(), "{answers:?}");
    assert!(answers[3]["result"]["tools"].is_array(), "{answers:?}");

    // A request that names its revision opens a session without
    // `initialize`; the notifications after it are the session's.
    let mut lines = vec![versioned(2, "2026-07-28", true)];
    lines.extend(stray[..3].iter().map(|l| l.to_string()));
    lines.extend([versioned(3, "2026-07-28", true), String::new()]);
    let out = common::run_cli("http://127.0.0.1:1", None, &["mcp"], Some(&lines.join("\n"))).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let answers: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    for answer in &answers {
        assert!(answer["result"]["tools"].is_array(), "{answers:?}");
    }

    // Alone, a dropped message is still one: input that ends after it is a
    // failed initialization, as after any first message but `initialize`.
    let out = common::run_cli("http://127.0.0.1:1", None, &["mcp"], Some(&format!("{}\n", stray[0]))).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
}

/// A method of a capability the server does not offer (resources, prompts,
/// completion, logging), or one MCP does not define, is not found, whatever
/// its params (no instructions to fix params it would never read), and says
/// which methods the server offers, over stdio and HTTP alike.
#[tokio::test]
async fn methods_of_capabilities_not_offered_are_not_found() {
    let requests = [
        ("resources/list", "{}"),
        ("resources/list", r#"{"cursor":5}"#),
        ("resources/templates/list", "{}"),
        ("resources/read", "{}"),
        ("resources/read", r#"{"uri":"x"}"#),
        ("resources/subscribe", r#"{"uri":"x"}"#),
        ("resources/subscribe", "{}"),
        ("resources/unsubscribe", r#"{"uri":"x"}"#),
        ("prompts/list", "{}"),
        ("prompts/get", r#"{"name":"p"}"#),
        ("logging/setLevel", r#"{"level":"info"}"#),
        ("completion/complete", "{}"),
        ("no/such/method", "{}"),
    ];
    let request = |id: usize, (method, params): (&str, &str)| {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#)
    };
    let check = |method: &str, answer: &Value| {
        assert_eq!(answer["error"]["code"], -32601, "{method}: {answer}");
        assert_eq!(
            answer["error"]["message"],
            format!("method not found: `{method}` (this server offers tools only: `tools/list` and `tools/call`)"),
            "{answer}"
        );
    };
    let mut input = vec![
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#.to_string(),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_string(),
    ];
    input.extend(requests.iter().enumerate().map(|(i, r)| request(i + 1, *r)));
    input.push(String::new());
    let out = common::run_cli("http://127.0.0.1:1", None, &["mcp"], Some(&input.join("\n"))).await;
    let answers: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    for (i, (method, _)) in requests.iter().enumerate() {
        let answer = answers
            .iter()
            .find(|a| a["id"] == i + 1)
            .unwrap_or_else(|| panic!("{method}: {answers:?}"));
        check(method, answer);
    }

    let server = Server::start(&[]).await;
    for (i, r) in requests.iter().enumerate() {
        let answer: Value = reqwest::Client::new()
            .post(server.url("/mcp"))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(request(i + 1, *r))
            .send()
            .await
            .expect("answered")
            .json()
            .await
            .expect("a JSON body");
        assert_eq!(answer["id"], i + 1, "{answer}");
        check(r.0, &answer);
    }
}

/// Over stdio, an `initialize` whose params do not fit is answered with what
/// it takes, as over HTTP (the protocol library's handshake named per-request
/// `_meta` fields instead), and `cairn mcp` exits as after any failed
/// initialization.
#[tokio::test]
async fn stdio_says_what_initialize_takes() {
    for params in [
        r#","params":{}"#,
        r#""#,
        r#","params":{"protocolVersion":7,"capabilities":{},"clientInfo":{"name":"t","version":"1"}}"#,
        r#","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t"}}"#,
    ] {
        let input = format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\"{params}}}\n");
        let out = common::run_cli("http://127.0.0.1:1", None, &["mcp"], Some(&input)).await;
        let answer: Value = serde_json::from_str(out.stdout.lines().next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{params}: {e}: {}", out.stdout));
        assert_eq!(answer["error"]["code"], -32602, "{answer}");
        assert!(
            answer["error"]["message"].as_str().is_some_and(
                |m| m.starts_with("invalid params for `initialize`: it takes an object with `protocolVersion`")
            ),
            "{answer}"
        );
        assert_eq!(out.code, 2, "{params}: {}", out.stderr);
    }
}

/// A tool call in flight when the server is told to stop answers as its
/// route does (an await ends with the running record), not with a 500 from
/// the protocol library, which would leave the caller not knowing what a
/// write it made did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_at_shutdown_gets_its_answer() {
    let server = Server::start(&[]).await;
    let held = json!({"id": "held", "input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"});
    assert_eq!(server.client().start(held).await.0, 201);
    let url = server.url("/mcp");
    let call = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(
                r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"process_await","arguments":{"id":"held","timeout_ms":40000}}}"#,
            )
            .send()
            .await
    });
    // The stop comes once the call waits.
    server.client().awaits_open(1).await;
    // SAFETY: sending a signal to our own child process by its pid.
    let rc = unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let response = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("answered in time")
        .expect("join")
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.expect("a JSON body");
    assert_eq!(answer["id"], 9, "{answer}");
    assert_eq!(answer["result"]["structuredContent"]["status"], "running", "{answer}");
}

/// Over streamable HTTP a client's `notifications/cancelled` comes on a POST
/// of its own (the official TypeScript SDK's, for one, leaves the call's POST
/// open): it ends the `process_await` it names at once, freeing the wait and
/// its connection, where the wait held both to its timeout. The wait is
/// answered as its bound would answer it (a late cancel may be another
/// client's). A cancel sent with another token, naming another request id,
/// or refused for its headers, ends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_over_http_ends_the_await_it_names() {
    let fixture = server().await;
    let server = &fixture.server;
    let held = json!({"id": "held", "input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"});
    assert_eq!(server.with_token(HOST).start(held).await.0, 201);
    // A POST with this `Accept` and `Authorization`.
    let post_as = |accept: &'static str, authorization: String, body: String| {
        reqwest::Client::new()
            .post(server.url("/mcp"))
            .header("Content-Type", "application/json")
            .header("Accept", accept)
            .header("Authorization", authorization)
            .body(body)
            .send()
    };
    let post = |token: &'static str, body: String| {
        post_as("application/json, text/event-stream", format!("Bearer {token}"), body)
    };
    let call = tokio::spawn(post(
        HOST,
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"process_await","arguments":{"id":"held","timeout_ms":40000}}}"#.into(),
    ));
    server.with_token(HOST).awaits_open(1).await;
    let cancel = |id: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{id},"reason":"user aborted"}}}}"#
        )
    };
    // Not this caller's request, not this request, and not a cancel taken:
    // the wait goes on.
    for (token, id) in [(S1, "9"), (HOST, "10"), (HOST, "\"9\"")] {
        let response = post(token, cancel(id)).await.expect("the cancel is answered");
        assert_eq!(response.status().as_u16(), 202, "{token} {id}");
    }
    let refused = post_as("text/plain", format!("Bearer {HOST}"), cancel("9"))
        .await
        .expect("the cancel is answered");
    assert_eq!(refused.status().as_u16(), 406);
    server.with_token(HOST).awaits_open(1).await;
    assert!(
        !call.is_finished(),
        "a cancel of another caller or request ended the wait"
    );
    // The token as the server reads it, spelled otherwise.
    let response = post_as(
        "application/json, text/event-stream",
        format!("bearer  {HOST}"),
        cancel("9"),
    )
    .await
    .expect("the cancel is answered");
    assert_eq!(response.status().as_u16(), 202);
    let answer = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the cancelled wait is answered well before its timeout")
        .expect("join")
        .expect("an answer");
    let answer: Value = answer.json().await.expect("a JSON body");
    assert_eq!(answer["id"], 9, "{answer}");
    assert_eq!(answer["result"]["structuredContent"]["status"], "running", "{answer}");
    assert!(
        answer["result"]["content"]
            .to_string()
            .contains("call process_await again"),
        "{answer}"
    );
    server.with_token(HOST).awaits_open(0).await;
    // A cancel that overtakes its call (another pooled connection) ends it
    // as it comes.
    let response = post(HOST, cancel("11")).await.expect("the cancel is answered");
    assert_eq!(response.status().as_u16(), 202);
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        post(
            HOST,
            r#"{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"process_await","arguments":{"id":"held","timeout_ms":40000}}}"#.into(),
        ),
    )
    .await
    .expect("the wait its cancel overtook is answered at once")
    .expect("an answer");
    let answer: Value = answer.json().await.expect("a JSON body");
    assert_eq!(answer["result"]["structuredContent"]["status"], "running", "{answer}");
}

/// Over stdio, input that ends while a request is in flight (a client that
/// wrote its calls and closed its end) still gets that request's answer
/// before `cairn mcp` exits: here an await that outlasts the few seconds the
/// protocol library gives requests once its input ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_answers_a_call_in_flight_when_input_ends() {
    let server = Server::start(&[]).await;
    let held = json!({"id": "held", "input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"});
    assert_eq!(server.client().start(held).await.0, 201);
    let input = [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"process_await","arguments":{"id":"held","timeout_ms":7000}}}"#,
    ]
    .join("\n")
        + "\n";
    let out = common::run_cli(&server.base, None, &["mcp"], Some(&input)).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // An id written as a float is the integer its answer carries: the end
    // of input does not wait on it past that answer.
    let floats = [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":2.0,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":3e0,"method":"ping"}"#,
    ]
    .join("\n")
        + "\n";
    let began = std::time::Instant::now();
    let pinged = common::run_cli(&server.base, None, &["mcp"], Some(&floats)).await;
    assert_eq!(pinged.code, 0, "{}", pinged.stderr);
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "waited {:?}",
        began.elapsed()
    );
    assert_eq!(pinged.stdout.lines().count(), 3, "{}", pinged.stdout);
    let answer = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|m| m["id"] == 2)
        .unwrap_or_else(|| panic!("no answer to the call: {}", out.stdout));
    assert_eq!(
        answer["result"]["structuredContent"]["status"], "running",
        "the await timed out on a running process: {answer}"
    );
}

/// One HTTP/1.1 request written by hand on a fresh connection to `server`
/// (its head, then `body` as given), and the stream, for a test that reads
/// the answer itself or drops the connection.
async fn raw_post(server: &Server, head: &str, body: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let address = server.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\n{head}\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write the head");
    stream.write_all(body).await.expect("write the body");
    stream
}

/// Everything the server writes on `stream` until it closes it (bounded).
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The JSON body of a whole HTTP/1.1 answer.
fn answer_body(answer: &str) -> Value {
    let (_, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{answer}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// SPEC §16 asks for MCP 2025-06-18 or later, and the revisions before it
/// ask what this server does not do (2025-03-26: JSON-RPC batches). A
/// client asking for one is answered with the latest revision the server
/// supports, as MCP's lifecycle has it, over HTTP and stdio; a request
/// whose `MCP-Protocol-Version` header names one is refused 400, as one
/// naming an unknown revision is.
#[tokio::test]
async fn revisions_before_2025_06_18_are_not_agreed_to() {
    let server = Server::start(&[]).await;
    let post = |version: Option<&'static str>, body: String| {
        let mut request = reqwest::Client::new()
            .post(server.url("/mcp"))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream");
        if let Some(v) = version {
            request = request.header("MCP-Protocol-Version", v);
        }
        request.body(body).send()
    };
    let initialize = |version: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{version}","capabilities":{{}},"clientInfo":{{"name":"t","version":"1"}}}}}}"#
        )
    };
    let agreed = |answer: &Value| {
        answer["result"]["protocolVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // What a client asking for a revision nobody knows is answered: the
    // latest the server supports over `initialize`.
    let latest: Value = post(None, initialize("2099-01-01"))
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    let latest = agreed(&latest);
    assert!(latest.as_str() >= "2025-06-18", "{latest}");
    for old in ["2024-11-05", "2025-03-26"] {
        let answer: Value = post(None, initialize(old))
            .await
            .expect("answered")
            .json()
            .await
            .expect("JSON");
        assert_eq!(agreed(&answer), latest, "asked for {old}: {answer}");
    }
    // A supported revision is agreed to as asked.
    let answer: Value = post(None, initialize("2025-06-18"))
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    assert_eq!(agreed(&answer), "2025-06-18", "{answer}");
    // The header of a request after the handshake.
    for (version, status) in [
        ("2024-11-05", 400),
        ("2025-03-26", 400),
        ("1999-01-01", 400),
        ("2025-06-18", 200),
        ("2025-11-25", 200),
    ] {
        let response = post(Some(version), r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#.into())
            .await
            .expect("answered");
        assert_eq!(response.status().as_u16(), status, "{version}");
        let answer: Value = response.json().await.expect("JSON");
        if status == 400 {
            assert_eq!(
                (answer["id"].clone(), answer["error"]["code"].clone()),
                (json!(7), json!(-32600)),
                "{answer}"
            );
            let message = answer["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(version) && message.contains("2025-06-18"),
                "says what was asked and what is spoken: {answer}"
            );
        } else {
            assert_eq!(answer["result"], json!({}), "{version}: {answer}");
        }
    }
    // A request naming its own revision in `_meta` is told which ones the
    // server speaks.
    let answer: Value = post(
        Some("2025-03-26"),
        r#"{"jsonrpc":"2.0","id":8,"method":"ping","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2025-03-26"}}}"#.into(),
    )
    .await
    .expect("answered")
    .json()
    .await
    .expect("JSON");
    let supported = answer["error"]["data"]["supported"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !supported.is_empty() && supported.iter().all(|v| v.as_str() >= Some("2025-06-18")),
        "{answer}"
    );
    // Over stdio, the handshake agrees as over HTTP.
    for (asked, agreed_to) in [("2025-03-26", latest.as_str()), ("2025-06-18", "2025-06-18")] {
        let input = format!("{}\n", initialize(asked));
        let out = common::run_cli(&server.base, None, &["mcp"], Some(&input)).await;
        let answer: Value = serde_json::from_str(out.stdout.lines().next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
        assert_eq!(agreed(&answer), agreed_to, "asked for {asked}: {answer}");
    }
}

/// A client that drops its connection while its `process_await` waits is
/// ordinary: the wait ends at once, and the server logs no error for the
/// answer it can no longer send (the protocol library logged one per call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_await_logs_no_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    let mut server = Server::serve_logging_to(&["--db", "memory", "--listen", "127.0.0.1:0"], &log).await;
    let held = json!({"id": "held", "input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"});
    assert_eq!(server.client().start(held).await.0, 201);
    let body = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"process_await","arguments":{"id":"held","timeout_ms":40000}}}"#;
    for _ in 0..2 {
        let stream = raw_post(&server, &format!("Content-Length: {}\r\n", body.len()), body.as_bytes()).await;
        server.client().awaits_open(1).await;
        drop(stream);
        // The wait ends with its connection, well before its 40 s.
        server.client().awaits_open(0).await;
    }
    // Stopped, so that everything it would log has been written.
    // SAFETY: sending a signal to our own child process by its pid.
    assert_eq!(unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) }, 0);
    assert!(server.wait_exit(Duration::from_secs(20)).is_some(), "the server stops");
    let logged = std::fs::read_to_string(&log).expect("log");
    let errors: Vec<&str> = logged.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

/// A body over `--max-body-bytes` that does not declare its size is refused
/// as everything at `/mcp` is, with a JSON-RPC error (413, `-32600`) that
/// carries the message's id when its start shows it: a client drops an
/// error it cannot match to a request, and would wait for ever.
#[tokio::test]
async fn an_oversized_chunked_body_is_a_jsonrpc_error() {
    let server = Server::start(&["--max-body-bytes", "1024"]).await;
    let message = format!(
        r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"process_get","arguments":{{"id":"{}"}}}}}}"#,
        "x".repeat(2000)
    );
    // The whole message in one chunk, and no end: everything sent is read.
    let chunk = format!("{:x}\r\n{message}\r\n", message.len());
    let mut stream = raw_post(&server, "Transfer-Encoding: chunked\r\n", chunk.as_bytes()).await;
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let body = answer_body(&answer);
    assert_eq!(
        (
            body["jsonrpc"].clone(),
            body["id"].clone(),
            body["error"]["code"].clone()
        ),
        (json!("2.0"), json!(9), json!(-32600)),
        "{answer}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("limit of 1024 bytes")),
        "{answer}"
    );
}

/// A body whose `Content-Length` is over `--max-body-bytes` is refused as
/// on every route, without reading it (but for the start that shows its
/// id), in `/mcp`'s shape: a JSON-RPC error (413, `-32600`), not the HTTP
/// API's error body.
#[tokio::test]
async fn an_oversized_content_length_is_a_jsonrpc_error() {
    let server = Server::start(&["--max-body-bytes", "1024"]).await;
    let shape = |answer: &str| {
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
        let body = answer_body(answer);
        assert_eq!(
            (body["jsonrpc"].clone(), body["error"]["code"].clone()),
            (json!("2.0"), json!(-32600)),
            "{answer}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("limit of 1024")),
            "{answer}"
        );
        body["id"].clone()
    };
    // Declares 100 MB and sends none of it, waiting to be told to: the
    // answer does not wait for it.
    let mut stream = raw_post(&server, "Content-Length: 104857600\r\nExpect: 100-continue\r\n", b"").await;
    assert_eq!(shape(&read_to_close(&mut stream).await), Value::Null);
    // A message sent whole: its id is answered.
    let message = format!(
        r#"{{"jsonrpc":"2.0","id":"big-1","method":"tools/call","params":{{"name":"process_get","arguments":{{"id":"{}"}}}}}}"#,
        "x".repeat(4000)
    );
    let mut stream = raw_post(
        &server,
        &format!("Content-Length: {}\r\n", message.len()),
        message.as_bytes(),
    )
    .await;
    assert_eq!(shape(&read_to_close(&mut stream).await), json!("big-1"));
}

/// A POST refused for its `Content-Type` (another type, or none) carries the
/// request's id as one refused for its `Accept` does, in this server's words,
/// not the endpoint library's.
#[tokio::test]
async fn a_post_refused_for_its_content_type_carries_its_id() {
    let server = Server::start(&[]).await;
    let http = reqwest::Client::new();
    let ping = r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#;
    for content_type in [Some("text/plain"), None] {
        let mut request = http
            .post(server.url("/mcp"))
            .header("Accept", "application/json, text/event-stream")
            .body(ping);
        if let Some(t) = content_type {
            request = request.header("Content-Type", t);
        }
        let response = request.send().await.expect("answered");
        assert_eq!(response.status().as_u16(), 415, "{content_type:?}");
        let answer: Value = response.json().await.expect("a JSON body");
        assert_eq!(
            (
                answer["jsonrpc"].clone(),
                answer["id"].clone(),
                answer["error"]["code"].clone()
            ),
            (json!("2.0"), json!(5), json!(-32600)),
            "{content_type:?}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("`Content-Type: application/json`"), "{answer}");
        let given = match content_type {
            Some(_) => "this request's is `text/plain`",
            None => "this request has none",
        };
        assert!(message.contains(given), "{answer}");
        assert!(!message.contains("Unsupported Media Type"), "{answer}");
    }
    // An `Accept` it cannot answer is said first, with the id too, in words.
    let response = http
        .post(server.url("/mcp"))
        .header("Content-Type", "text/plain")
        .header("Accept", "application/json")
        .body(ping)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 406);
    let answer: Value = response.json().await.expect("a JSON body");
    assert_eq!(answer["id"], json!(5), "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("Not Acceptable"), "{answer}");
    // A body whose start shows no id is answered with a null one.
    let response = http
        .post(server.url("/mcp"))
        .header("Content-Type", "text/plain")
        .header("Accept", "application/json, text/event-stream")
        .body("ping")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 415);
    let answer: Value = response.json().await.expect("a JSON body");
    assert_eq!(answer["id"], Value::Null, "{answer}");
    assert!(answer.as_object().is_some_and(|a| a.contains_key("id")), "{answer}");
}

/// A JSON-RPC response POSTed to `/mcp` (this server sends no requests) is
/// refused with an HTTP error, in this server's words, and a JSON-RPC error
/// whose `id` is null (MCP's streamable HTTP lets it have none): the
/// response's id names no request of the client's that this answers.
#[tokio::test]
async fn a_posted_response_is_refused_with_a_null_id() {
    let server = Server::start(&[]).await;
    let post = |body: &'static str| {
        reqwest::Client::new()
            .post(server.url("/mcp"))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(body)
            .send()
    };
    for body in [
        r#"{"jsonrpc":"2.0","id":5,"result":{}}"#,
        r#"{"jsonrpc":"2.0","id":"r-4","error":{"code":-32601,"message":"no"}}"#,
        // An error response's id is null when it answers a request whose
        // id its sender could not read (JSON-RPC 2.0 §5): still a response.
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}"#,
    ] {
        let response = post(body).await.expect("answered");
        assert_eq!(response.status().as_u16(), 400, "{body}");
        let answer: Value = response.json().await.expect("a JSON body");
        assert!(
            answer.as_object().is_some_and(|a| a.contains_key("id")),
            "{body}: {answer}"
        );
        assert_eq!(
            (answer["id"].clone(), answer["error"]["code"].clone()),
            (Value::Null, json!(-32600)),
            "{body}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("takes no responses"), "{body}: {answer}");
        assert!(!message.contains("stateless"), "{body}: {answer}");
        assert!(!message.contains("`id`"), "{body}: {answer}");
    }
}

/// Over stdio, an error response whose id is null is a response like any
/// other: never answered (JSON-RPC answers no response), not refused for
/// its id; the requests around it are served.
#[tokio::test]
async fn stdio_leaves_an_error_response_with_a_null_id_unanswered() {
    let lines = [
        r#"{"jsonrpc":"2.0","id":6,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}"#,
        r#"{"jsonrpc":"2.0","id":5,"result":{}}"#,
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#,
        "",
    ];
    let out = common::run_cli("http://127.0.0.1:1", None, &["mcp"], Some(&lines.join("\n"))).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let answers: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let ids: Vec<&Value> = answers.iter().map(|a| &a["id"]).collect();
    assert_eq!(ids, [&json!(6), &json!(7)], "{answers:?}");
    assert!(answers[1]["result"]["tools"].is_array(), "{answers:?}");
}

/// A message that begins with a UTF-8 byte order mark (RFC 8259 §8.1 lets
/// a parser ignore one, and the HTTP API and the CLI do) is read as the
/// message after it, in a POST to `/mcp` and on a stdio line; a second mark
/// is no JSON.
#[tokio::test]
async fn a_message_may_begin_with_a_byte_order_mark() {
    const BOM: &str = "\u{feff}";
    let initialize = r#"{"jsonrpc":"2.0","id":6,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let server = Server::start(&[]).await;
    let post = |body: String| {
        reqwest::Client::new()
            .post(server.url("/mcp"))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2025-06-18")
            .body(body)
            .send()
    };
    let answer = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.expect("a JSON body"))
    };
    let (status, init) = answer(post(format!("{BOM}{initialize}")).await.expect("answered")).await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["id"], 6, "{init}");
    assert!(init["result"]["protocolVersion"].is_string(), "{init}");
    let start = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "process_start",
        "arguments": {"id": "bom", "input": {"type": "external"}, "disposition": "externally_owned"}}});
    let (status, started) = answer(post(format!("{BOM}{start}")).await.expect("answered")).await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["result"]["structuredContent"]["id"], "bom", "{started}");
    let ping = r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#;
    let (status, twice) = answer(post(format!("{BOM}{BOM}{ping}")).await.expect("answered")).await;
    assert_eq!(
        (status, twice["error"]["code"].clone()),
        (400, json!(-32700)),
        "{twice}"
    );

    let lines = [
        format!("{BOM}{initialize}"),
        format!("{BOM}{}", r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
        format!("{BOM}{}", r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#),
        format!("{BOM}{BOM}{ping}"),
        String::new(),
    ];
    let out = common::run_cli("http://127.0.0.1:1", None, &["mcp"], Some(&lines.join("\n"))).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let answers: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let by_id = |id: Value| answers.iter().find(|a| a["id"] == id).cloned().unwrap_or_default();
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert!(by_id(json!(6))["result"]["protocolVersion"].is_string(), "{answers:?}");
    assert!(by_id(json!(7))["result"]["tools"].is_array(), "{answers:?}");
    assert_eq!(by_id(Value::Null)["error"]["code"], -32700, "{answers:?}");
}

/// `cairn mcp`'s `process_await`, when its server is killed (SIGKILL) while
/// it holds the wait, says the server ended the wait as `cairn await` does,
/// in words and not the HTTP client's, and not that the server could not be
/// reached: the request had been taken. Still `unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_await_says_its_server_ended_the_wait() {
    let mut f = server().await;
    assert_eq!(f.server.with_token(HOST).start(common::waiter("w")).await.0, 201);
    let client = connect(&f.server, Transport::Stdio, HOST).await;
    let waiting = call(&client, "process_await", json!({"id": "w", "timeout_ms": 20000}));
    let killing = async {
        f.server.with_token(HOST).awaits_open(1).await;
        // SAFETY: sending SIGKILL to our own child process by its pid.
        assert_eq!(unsafe { libc::kill(f.server.pid() as libc::pid_t, libc::SIGKILL) }, 0);
        assert!(f.server.wait_exit(Duration::from_secs(20)).is_some());
    };
    let (result, ()) = tokio::join!(waiting, killing);
    let result = result.expect("tools/call answered");
    assert_eq!(result.is_error, Some(true));
    let text = &result.content[0].as_text().expect("text content").text;
    let body: Value = serde_json::from_str(text).expect("error body is JSON");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the server ended the wait (it closed the connection before answering)"),
        "{message}"
    );
    assert!(
        message.contains("process_await for w again once the server is back"),
        "{message}"
    );
    for internal in ["cannot reach", "error sending request", "http://"] {
        assert!(!message.contains(internal), "says {internal:?}: {message}");
    }
    let _ = client.cancel().await;
}

/// A POST to `/mcp` whose body is declared in a `charset` or a
/// `Content-Encoding` the server does not read is refused as the HTTP API
/// refuses it: 415, in the API's words, as a JSON-RPC error with the id its
/// start shows; nothing runs. UTF-8 (and no encoding, or `identity`) is read.
#[tokio::test]
async fn mcp_refuses_a_charset_or_encoding_it_does_not_read() {
    let fx = server().await;
    let host = fx.server.with_token(HOST);
    let http = reqwest::Client::new();
    let send = |path: &str, content_type: &str, encoding: Option<&str>, body: Vec<u8>| {
        let mut request = http
            .post(fx.server.url(path))
            .bearer_auth(HOST)
            .header("Content-Type", content_type)
            .header("Accept", "application/json, text/event-stream")
            .body(body);
        if let Some(encoding) = encoding {
            request = request.header("Content-Encoding", encoding);
        }
        async move {
            let response = request.send().await.expect("answered");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("a JSON body"))
        }
    };
    // A start whose input holds `é` in Latin-1 (one byte, 0xE9).
    let mcp_start = |id: &str| -> Vec<u8> {
        let text = json!({
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "process_start", "arguments": start_args(id, "echo", json!({"value": "caf\u{e9}"}))},
        })
        .to_string();
        text.chars()
            .map(|c| u8::try_from(u32::from(c)).expect("Latin-1"))
            .collect()
    };
    let api_start = |id: &str| -> Vec<u8> {
        let text = start_args(id, "echo", json!({"value": "caf\u{e9}"})).to_string();
        text.chars()
            .map(|c| u8::try_from(u32::from(c)).expect("Latin-1"))
            .collect()
    };
    // The same start in UTF-8.
    let utf8 = |id: &str| {
        json!({
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "process_start", "arguments": start_args(id, "echo", json!({"value": "caf\u{e9}"}))},
        })
        .to_string()
        .into_bytes()
    };
    // The start of a gzip stream: its id cannot be read.
    let gzipped = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03".to_vec();
    for (content_type, encoding, body, id) in [
        (
            "application/json; charset=iso-8859-1",
            None,
            mcp_start("latin"),
            json!(1),
        ),
        ("application/json", Some("gzip"), gzipped.clone(), Value::Null),
        ("application/json", Some("br"), utf8("brotli"), json!(2)),
    ] {
        let (status, answer) = send("/mcp", content_type, encoding, body.clone()).await;
        assert_eq!(status, 415, "{content_type} {encoding:?}: {answer}");
        assert_eq!(
            (
                answer["jsonrpc"].clone(),
                answer["id"].clone(),
                answer["error"]["code"].clone()
            ),
            (json!("2.0"), id, json!(-32600)),
            "{content_type} {encoding:?}: {answer}"
        );
        assert!(answer.as_object().is_some_and(|a| a.contains_key("id")), "{answer}");
        // The API's refusal of the same headers, in the same words.
        let (status, api) = send("/v1/processes", content_type, encoding, api_start("api")).await;
        assert_eq!(status, 415, "{api}");
        assert_eq!(
            answer["error"]["message"].as_str().unwrap_or_default(),
            format!(
                "invalid request: {}",
                api["error"]["message"].as_str().expect("a message")
            ),
            "{content_type} {encoding:?}"
        );
    }
    for id in ["latin", "brotli", "api"] {
        let (status, _) = host.get(&format!("/v1/processes/{id}")).await;
        assert_eq!(status, 404, "{id}: nothing ran");
    }
    // UTF-8, declared or not, and `identity`, are read as sent.
    for (id, content_type, encoding) in [
        ("utf8", "application/json; charset=utf-8", None),
        ("identity", "application/json", Some("identity")),
    ] {
        let (status, answer) = send("/mcp", content_type, encoding, utf8(id)).await;
        assert_eq!(
            (status, answer["result"]["isError"].clone()),
            (200, json!(false)),
            "{answer}"
        );
        let (status, record) = host.get(&format!("/v1/processes/{id}")).await;
        assert_eq!(status, 200, "{id} ran");
        assert_eq!(record["input"]["args"]["value"], "caf\u{e9}", "{record}");
    }
}

/// `cairn mcp` offers the host-only schedule tools only when the server
/// answered its probe of them: a token the server does not know, or a
/// server it cannot reach, says nothing of what the token may do, so only
/// the tools every token may use are offered. The host token is offered them.
#[tokio::test]
async fn stdio_offers_schedule_tools_only_when_the_server_says_so() {
    let fx = server().await;
    let lines = [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
        "",
    ]
    .join("\n");
    for (base, token, schedules) in [
        (fx.server.base.as_str(), Some("wrong"), false),
        ("http://127.0.0.1:1", Some(HOST), false),
        ("http://127.0.0.1:1", None, false),
        (fx.server.base.as_str(), Some(S1), false),
        (fx.server.base.as_str(), Some(HOST), true),
    ] {
        let out = common::run_cli(base, token, &["mcp"], Some(&lines)).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let listed: Value = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
            .find(|a| a["id"] == 2)
            .expect("tools/list answered");
        let names: Vec<&str> = listed["result"]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert!(names.contains(&"process_start"), "{base} {token:?}: {names:?}");
        assert_eq!(
            names.iter().any(|n| n.starts_with("schedule_")),
            schedules,
            "{base} {token:?}: {names:?}"
        );
    }
}

/// `cairn mcp` (stdio, forwarding to `server` with `token`) given raw
/// `lines` after MCP's handshake: each answer, by its id.
async fn stdio_raw(server: &Server, token: &str, lines: &[String]) -> std::collections::HashMap<String, Value> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut child = tokio::process::Command::new(BIN)
        .arg("mcp")
        .env("CAIRN_SERVER", &server.base)
        .env("CAIRN_TOKEN", token)
        .env("RUST_LOG", "off")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn cairn mcp");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    async fn next<R: tokio::io::AsyncBufRead + Unpin>(out: &mut tokio::io::Lines<R>) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), out.next_line())
            .await
            .expect("answered in time")
            .expect("read")
            .expect("a line");
        serde_json::from_str::<Value>(&line).expect("a JSON line")
    }
    let initialize = r#"{"jsonrpc":"2.0","id":"init","method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    stdin
        .write_all(format!("{initialize}\n").as_bytes())
        .await
        .expect("write");
    assert_eq!(next(&mut out).await["id"], "init");
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
        .await
        .expect("write");
    for line in lines {
        stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write");
    }
    stdin.flush().await.expect("flush");
    let mut answers = std::collections::HashMap::new();
    while answers.len() < lines.len() {
        let answer = next(&mut out).await;
        answers.insert(answer["id"].to_string(), answer);
    }
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    answers
}

/// SPEC §16: a cairn error is a tool error. A `tools/call` sound but for its
/// arguments' JSON (a key given twice, an integer past 64 bits) is answered
/// on both transports with the tool error `invalid_request`, saying what
/// the HTTP API says of a body of those bytes, and runs nothing (the
/// protocol library would read the last of two values, or a rounded
/// integer). The same fault elsewhere in the message stays the message's
/// own (`-32600`), and a call naming no tool stays a protocol error.
#[tokio::test]
async fn a_fault_in_a_calls_arguments_is_a_tool_error() {
    let fx = server().await;
    let http = fx.server.with_token(HOST);
    let cases = [
        (
            "process_start",
            r#"{"id":"twice-a","id":"twice-b","input":{"type":"tool_call","tool":"echo","args":{"value":1}},"disposition":"rerunnable"}"#,
        ),
        (
            "process_start",
            r#"{"id":"wide-a","input":{"type":"tool_call","tool":"echo","args":{"value":18446744073709551616}},"disposition":"rerunnable"}"#,
        ),
        (
            "process_start",
            "{\n  \"id\": \"twice-c\",\n  \"input\": {\"type\": \"tool_call\", \"tool\": \"echo\", \"args\": {\"value\": 1, \"value\": 2}},\n  \"disposition\": \"rerunnable\"\n}",
        ),
        ("process_get", r#"{"id":"a","id":"b"}"#),
        ("process_list", r#"{"limit":18446744073709551616}"#),
    ];
    // What the HTTP API says of a body of those bytes.
    let mut expected = Vec::new();
    for (tool, arguments) in cases {
        let (status, body) = http
            .post_raw("/v1/processes", "application/json", arguments.as_bytes().to_vec())
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{body}"
        );
        let said = body["error"]["message"].as_str().expect("message");
        let said = said.strip_prefix("request body: ").expect("said of the body");
        assert!(
            said.contains("twice") || said.contains("past what 64 bits hold"),
            "{said}"
        );
        expected.push(json!({"code": "invalid_request", "message": format!("arguments of `{tool}`: {said}")}));
    }
    let call = |id: usize, tool: &str, arguments: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{arguments}}}}}"#
        )
    };
    let lines: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (tool, arguments))| call(i, tool, arguments))
        .collect();
    // Protocol errors still: the same fault outside the arguments, or a
    // call naming no tool.
    let protocol = [
        (
            r#"{"jsonrpc":"2.0","id":100,"method":"tools/call","params":{"name":"process_get","name":"process_get","arguments":{"id":"a"}}}"#.to_string(),
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":101,"method":"tools/call","params":{"name":"process_get","arguments":{"id":"a"},"_meta":{"n":18446744073709551616}}}"#.to_string(),
            -32600,
        ),
        (call(102, "process_delete", r#"{"id":"a","id":"b"}"#), -32602),
    ];
    let tool_error = |answer: &Value| -> Value {
        assert_eq!(answer["result"]["isError"], true, "{answer}");
        let text = answer["result"]["content"][0]["text"].as_str().expect("text");
        serde_json::from_str::<Value>(text).expect("an error body")["error"].clone()
    };
    // Streamable HTTP: each a POST of its own.
    let post = |body: String| {
        let request = reqwest::Client::new()
            .post(fx.server.url("/mcp"))
            .bearer_auth(HOST)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(body);
        async move {
            let response = request.send().await.expect("answered");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("a JSON body"))
        }
    };
    for (i, line) in lines.iter().enumerate() {
        let (status, answer) = post(line.clone()).await;
        assert_eq!((status, &answer["id"]), (200, &json!(i)), "{answer}");
        assert_eq!(tool_error(&answer), expected[i], "http {line}");
    }
    for (line, code) in &protocol {
        let (_, answer) = post(line.clone()).await;
        assert_eq!(answer["error"]["code"], *code, "http {line}: {answer}");
    }
    // stdio: the same answers (for the messages a line can carry).
    let one_line = |line: &&String| !line.contains('\n');
    let all: Vec<String> = lines
        .iter()
        .filter(one_line)
        .chain(protocol.iter().map(|(l, _)| l))
        .cloned()
        .collect();
    let answers = stdio_raw(&fx.server, HOST, &all).await;
    for (i, line) in lines.iter().enumerate().filter(|(_, l)| one_line(l)) {
        assert_eq!(tool_error(&answers[&i.to_string()]), expected[i], "stdio {line}");
    }
    for (line, code) in &protocol {
        let id = serde_json::from_str::<Value>(line).expect("JSON")["id"].to_string();
        assert_eq!(answers[&id]["error"]["code"], *code, "stdio {line}: {:?}", answers[&id]);
    }
    // Nothing was started: not the first value, not the last.
    for id in ["twice-a", "twice-b", "twice-c", "wide-a"] {
        let (status, body) = http.get(&format!("/v1/processes/{id}")).await;
        assert_eq!(status, 404, "{id}: {body}");
    }
}

/// An id no URL path can carry (empty, `.`, `..`) is refused by every tool
/// that names one in its path, in the server's words, on both transports
/// (`cairn mcp`, an HTTP client, once said its own).
#[tokio::test]
async fn an_id_no_path_can_carry_is_refused_alike_on_both_transports() {
    let fx = server().await;
    for transport in [Transport::Http, Transport::Stdio] {
        let client = connect(&fx.server, transport, HOST).await;
        for id in ["", ".", ".."] {
            let calls = [
                ("process_get", json!({"id": id}), "process id"),
                ("process_events", json!({"id": id}), "process id"),
                ("process_await", json!({"id": id, "timeout_ms": 0}), "process id"),
                (
                    "process_signal",
                    json!({"id": id, "name": "go", "signal_id": "s"}),
                    "process id",
                ),
                ("process_cancel", json!({"id": id}), "process id"),
                (
                    "process_complete",
                    json!({"id": id, "outcome": {"type": "success", "value": 1}, "authority": "ci"}),
                    "process id",
                ),
                ("schedule_pause", json!({"id": id}), "schedule id"),
                ("schedule_resume", json!({"id": id}), "schedule id"),
            ];
            for (tool, arguments, what) in calls {
                let said = match id {
                    "" => format!("invalid id: {what} must not be empty"),
                    _ => format!(
                        "invalid id: {what} `{id}` is a relative path segment, which no URL can name; choose another"
                    ),
                };
                assert_eq!(
                    err(&client, tool, arguments).await,
                    ("invalid_id".to_string(), said),
                    "{transport:?} {tool} {id:?}"
                );
            }
        }
        client.cancel().await.expect("close");
    }
}
