//! The Hermes tool-calling text of Qwen2.5's chat template, in one place: the `# Tools` system
//! block, the call and response tags, and the call format shown to the model. The chat
//! template ([`crate::render_chat`]), the tool-call parser and system prompt (`armt-tools`) and
//! the rollout engine's tool turns (`armt-rollout`) all read it from here, so what the model is
//! told and what is parsed cannot drift apart.

use crate::write_py_json;
use serde_json::Value;

/// Opens an assistant's tool call.
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
/// Closes an assistant's tool call (its token ends a generation turn).
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";
/// Opens a tool's response inside the following user turn.
pub const TOOL_RESPONSE_OPEN: &str = "<tool_response>";
/// Closes a tool's response.
pub const TOOL_RESPONSE_CLOSE: &str = "</tool_response>";
/// The call format the system block shows; also the hint after a malformed call.
pub const CALL_FORMAT: &str =
    "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>";

const TOOLS_HEADER: &str =
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
const TOOLS_FOOTER: &str =
    "\n</tools>\n\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\n";

/// Appends the `# Tools` block that follows the system text when tools are offered: each
/// schema on its own line as Python's `json.dumps` prints it, then the call format.
pub fn write_tools_block(out: &mut String, schemas: &[Value]) {
    out.push_str(TOOLS_HEADER);
    for s in schemas {
        out.push('\n');
        write_py_json(out, s);
    }
    out.push_str(TOOLS_FOOTER);
    out.push_str(CALL_FORMAT);
}

/// Appends one tool call as the template renders an assistant's `tool_calls` entry.
pub fn write_tool_call(out: &mut String, name: &str, arguments: &Value) {
    out.push('\n');
    out.push_str(TOOL_CALL_OPEN);
    out.push_str("\n{\"name\": \"");
    out.push_str(name);
    out.push_str("\", \"arguments\": ");
    write_py_json(out, arguments);
    out.push_str("}\n");
    out.push_str(TOOL_CALL_CLOSE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_block_lists_schemas_then_the_call_format() {
        let mut s = String::new();
        write_tools_block(&mut s, &[serde_json::json!({"type": "function"})]);
        assert!(s.starts_with("\n\n# Tools\n"), "{s}");
        assert!(s.contains("<tools>\n{\"type\": \"function\"}\n</tools>"), "{s}");
        assert!(s.ends_with(CALL_FORMAT), "{s}");
        let mut c = String::new();
        write_tool_call(&mut c, "zoom", &serde_json::json!({"bbox": [1, 2]}));
        assert_eq!(
            c,
            "\n<tool_call>\n{\"name\": \"zoom\", \"arguments\": {\"bbox\": [1, 2]}}\n</tool_call>"
        );
    }
}
