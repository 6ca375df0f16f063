//! Tools registered by name from a verl-style tool YAML, and the one entry point the rollout
//! calls to run a parsed call.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::document::{DocConfig, DocPageByIndexTool, DocPageSearchTool};
use crate::error::{SchemaError, ToolError, ToolSpecError};
use crate::instruction::{InstructionCheck, InstructionTool};
use crate::parse::{parse_tool_call, ParsedToolCall};
use crate::zoom::{ImageZoomInTool, ZoomConfig};
use crate::{Tool, ToolContext, ToolOutput};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolsFile {
    tools: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    class_name: String,
    #[serde(default)]
    config: Option<serde_yaml::Value>,
    #[serde(default)]
    tool_schema: Option<serde_yaml::Value>,
}

/// One tool as a config file describes it, before it is built.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    /// The paper's dotted Python class (`verl.tools.image_zoom_in_tool.ImageZoomInTool`) or
    /// just the class (`ImageZoomInTool`).
    pub class_name: String,
    /// The entry's `config:` (an object; `{}` if absent).
    pub config: Value,
    /// The entry's `tool_schema:`; `None` uses the tool's built-in schema.
    pub schema: Option<Value>,
}

impl ToolSpec {
    /// Builds the tool. Errors name what is wrong (unknown class, unknown config key, bad schema).
    pub fn build(&self) -> Result<Box<dyn Tool>, ToolSpecError> {
        if let Some(s) = &self.schema {
            validate_schema(s)?;
        }
        let short = self.class_name.rsplit('.').next().unwrap_or(&self.class_name);
        let config = if self.config.is_null() {
            Value::Object(Default::default())
        } else {
            self.config.clone()
        };
        let tool: Box<dyn Tool> = match short {
            "ImageZoomInTool" => {
                let c: ZoomConfig =
                    serde_json::from_value(config).map_err(|source| ToolSpecError::Config { source })?;
                check_native(&c.kind)?;
                Box::new(ImageZoomInTool::new(c, self.schema.clone()))
            }
            "DocPageSearchTool" | "DocPageByIndexTool" => {
                let c: DocConfig =
                    serde_json::from_value(config).map_err(|source| ToolSpecError::Config { source })?;
                c.validate()?;
                if short == "DocPageSearchTool" {
                    Box::new(DocPageSearchTool::new(c, self.schema.clone()))
                } else {
                    Box::new(DocPageByIndexTool::new(c, self.schema.clone()))
                }
            }
            _ => {
                let check =
                    InstructionCheck::from_class_name(short).ok_or_else(|| ToolSpecError::UnknownClass {
                        class: self.class_name.clone(),
                    })?;
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Plain {
                    #[serde(default, rename = "type")]
                    kind: Option<String>,
                    /// `false`: no `Reason:` line (the original's output).
                    #[serde(default)]
                    reason: Option<bool>,
                }
                let c: Plain =
                    serde_json::from_value(config).map_err(|source| ToolSpecError::Config { source })?;
                check_native(&c.kind)?;
                Box::new(
                    InstructionTool::new(check, self.schema.clone()).with_reason(c.reason.unwrap_or(true)),
                )
            }
        };
        validate_schema(tool.schema())?;
        Ok(tool)
    }
}

pub(crate) fn check_native(kind: &Option<String>) -> Result<(), ToolSpecError> {
    match kind.as_deref() {
        None | Some("native") => Ok(()),
        Some(k) => Err(ToolSpecError::UnsupportedType { kind: k.into() }),
    }
}

/// Checks a tool schema has the shape the prompt and the tools rely on:
/// `{"type": "function", "function": {"name", "description", "parameters": {"type": "object",
/// "properties": {…}, "required": [… ⊆ properties]}}}`, each property with a `type`.
pub(crate) fn validate_schema(s: &Value) -> Result<(), SchemaError> {
    let obj = s.as_object().ok_or(SchemaError::NotMapping)?;
    for k in obj.keys() {
        if k != "type" && k != "function" {
            return Err(SchemaError::UnknownKey { key: k.clone() });
        }
    }
    if obj.get("type").and_then(Value::as_str) != Some("function") {
        return Err(SchemaError::NotFunction);
    }
    let f = obj
        .get("function")
        .and_then(Value::as_object)
        .ok_or(SchemaError::FunctionNotMapping)?;
    for k in f.keys() {
        if !matches!(k.as_str(), "name" | "description" | "parameters" | "strict") {
            return Err(SchemaError::UnknownFunctionKey { key: k.clone() });
        }
    }
    let name = f.get("name").and_then(Value::as_str).unwrap_or("");
    if name.trim().is_empty() {
        return Err(SchemaError::MissingName);
    }
    if !f.get("description").is_some_and(Value::is_string) {
        return Err(SchemaError::DescriptionNotString { tool: name.into() });
    }
    let p = f
        .get("parameters")
        .and_then(Value::as_object)
        .ok_or_else(|| SchemaError::ParametersNotMapping { tool: name.into() })?;
    if p.get("type").and_then(Value::as_str) != Some("object") {
        return Err(SchemaError::ParametersNotObject { tool: name.into() });
    }
    let props = p
        .get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| SchemaError::PropertiesNotMapping { tool: name.into() })?;
    for (k, v) in props {
        if !v.get("type").is_some_and(Value::is_string) {
            return Err(SchemaError::PropertyWithoutType {
                tool: name.into(),
                property: k.clone(),
            });
        }
    }
    if let Some(req) = p.get("required") {
        let req = req
            .as_array()
            .ok_or_else(|| SchemaError::RequiredNotList { tool: name.into() })?;
        for r in req {
            let r = r
                .as_str()
                .ok_or_else(|| SchemaError::RequiredNotStrings { tool: name.into() })?;
            if !props.contains_key(r) {
                return Err(SchemaError::RequiredNotInProperties {
                    tool: name.into(),
                    param: r.into(),
                });
            }
        }
    }
    Ok(())
}

/// Tools by name, in config order.
#[derive(Default)]
pub struct ToolRegistry {
    tools: Vec<Box<dyn Tool>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRegistry")
            .field("tools", &self.names())
            .finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads a tool YAML: `tools: [{class_name, config, tool_schema}, …]`. Unknown keys,
    /// classes, config keys, malformed schemas and duplicate names are errors naming the file
    /// and the entry.
    pub fn from_yaml_file(path: impl AsRef<Path>) -> Result<Self, ToolError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ToolError::Io {
            path: path.into(),
            source: e,
        })?;
        Self::from_yaml_str(&text, path)
    }

    /// As [`ToolRegistry::from_yaml_file`], from text; `origin` names it in errors.
    pub fn from_yaml_str(text: &str, origin: &Path) -> Result<Self, ToolError> {
        let file: ToolsFile = serde_yaml::from_str(text).map_err(|source| ToolError::Yaml {
            path: origin.into(),
            source,
        })?;
        let mut reg = Self::new();
        for (index, e) in file.tools.into_iter().enumerate() {
            let entry_err = |entry: &str, source: ToolSpecError| ToolError::Entry {
                path: origin.into(),
                index,
                entry: entry.to_string(),
                source,
            };
            let to_json =
                |v: Option<serde_yaml::Value>, field: &'static str| -> Result<Option<Value>, ToolError> {
                    v.map(serde_json::to_value)
                        .transpose()
                        .map_err(|source| entry_err(&e.class_name, ToolSpecError::NotJson { field, source }))
                };
            let schema = to_json(e.tool_schema.clone(), "tool_schema")?;
            let config = to_json(e.config.clone(), "config")?.unwrap_or(Value::Null);
            let entry = schema
                .as_ref()
                .and_then(|s| s["function"]["name"].as_str())
                .map_or_else(|| e.class_name.clone(), |n| format!("{n}, {}", e.class_name));
            let spec = ToolSpec {
                class_name: e.class_name.clone(),
                config,
                schema,
            };
            let tool = spec.build().map_err(|source| entry_err(&entry, source))?;
            if reg.get(tool.name()).is_some() {
                let name = tool.name().to_string();
                return Err(entry_err(&entry, ToolSpecError::DuplicateName { name }));
            }
            // `build` has checked the schema.
            reg.tools.push(tool);
        }
        Ok(reg)
    }

    /// Adds a tool; its name must be new.
    pub fn register(&mut self, tool: Box<dyn Tool>) -> Result<(), ToolError> {
        if self.get(tool.name()).is_some() {
            return Err(ToolError::DuplicateName {
                name: tool.name().to_string(),
            });
        }
        validate_schema(tool.schema()).map_err(|source| ToolError::Schema {
            name: tool.name().to_string(),
            source,
        })?;
        self.tools.push(tool);
        Ok(())
    }

    /// Adds every tool of `other` (names must stay unique).
    pub fn extend(&mut self, other: ToolRegistry) -> Result<(), ToolError> {
        for t in other.tools {
            self.register(t)?;
        }
        Ok(())
    }

    /// The tools' full schemas in registration order, for [`crate::system_prompt`] and the chat template.
    pub fn schemas(&self) -> Vec<Value> {
        self.tools.iter().map(|t| t.schema().clone()).collect()
    }

    /// Tool names in registration order.
    pub fn names(&self) -> Vec<&str> {
        self.tools.iter().map(|t| t.name()).collect()
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&dyn Tool> {
        self.tools.iter().find(|t| t.name() == name).map(|t| t.as_ref())
    }

    /// Runs one call: create, execute, release. Never panics and never returns an error: an
    /// unknown tool (`Error: Unknown tool '<name>'`), bad arguments or a failing tool give an
    /// output whose text tells the model what went wrong. `<image>` is removed from the text
    /// (it would be read as an image placeholder). Returned images are registered in `ctx` as
    /// `observation_k`, their keys put in `image_keys`.
    pub fn call(&self, call: &ParsedToolCall, ctx: &mut ToolContext) -> ToolOutput {
        let mut out = match self.get(&call.name) {
            None => ToolOutput::error(format!("Error: Unknown tool '{}'", call.name)),
            Some(_) if !call.arguments.is_object() => {
                ToolOutput::error("Error when executing tool: the arguments must be a JSON object.")
            }
            Some(tool) => run_guarded(tool, call, ctx),
        };
        out.text = out.text.replace("<image>\n", "").replace("<image>", "");
        for img in &out.images {
            out.image_keys.push(ctx.register_observation(img.clone()));
        }
        out.metrics
            .insert("tool".into(), Value::String(call.name.clone()));
        out
    }

    /// Parses an assistant turn and runs its first call: `None` if the turn has no
    /// `<tool_call>`; a malformed call gives its error text as a failed output.
    pub fn handle_turn(
        &self,
        assistant_text: &str,
        ctx: &mut ToolContext,
    ) -> Option<(Option<ParsedToolCall>, ToolOutput)> {
        Some(match parse_tool_call(assistant_text)? {
            Ok(call) => {
                let out = self.call(&call, ctx);
                (Some(call), out)
            }
            Err(e) => (None, ToolOutput::error(e.to_string())),
        })
    }
}

/// create → execute → release, with a panic in a tool turned into an error text so one bad
/// tool cannot bring the whole rollout down.
fn run_guarded(tool: &dyn Tool, call: &ParsedToolCall, ctx: &ToolContext) -> ToolOutput {
    let res = catch_unwind(AssertUnwindSafe(|| {
        let id = match tool.create(ctx) {
            Ok(id) => id,
            Err(e) => return ToolOutput::error(format!("Error when executing tool: {e}")),
        };
        let out = tool.execute(id, &call.arguments, ctx);
        tool.release(id);
        out
    }));
    res.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        ToolOutput::error(format!("Error when executing tool: {msg}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{system_prompt, InstanceId};
    use image::DynamicImage;
    use serde_json::json;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn configs_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tools")
    }

    #[test]
    fn shipped_yamls_load_with_valid_schemas() {
        let expect = [
            ("zoom.yaml", 1),
            ("document.yaml", 2),
            ("instruction.yaml", 19),
            ("all.yaml", 22),
        ];
        for (file, n) in expect {
            let reg =
                ToolRegistry::from_yaml_file(configs_dir().join(file)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(reg.len(), n, "{file}");
            for s in reg.schemas() {
                validate_schema(&s).unwrap();
                // Valid JSON, printed the way the prompt prints it.
                let mut txt = String::new();
                armt_processing::write_py_json(&mut txt, &s);
                assert_eq!(serde_json::from_str::<Value>(&txt).unwrap(), s);
            }
        }
        let all = ToolRegistry::from_yaml_file(configs_dir().join("all.yaml")).unwrap();
        // The fields the paper's pydantic model dropped reach the prompt.
        let zoom = all.get("image_zoom_in_tool").unwrap().schema();
        assert_eq!(
            zoom["function"]["parameters"]["properties"]["bbox_2d"]["items"],
            json!({"type": "number", "minimum": 0, "maximum": 1000})
        );
        assert_eq!(
            zoom["function"]["parameters"]["properties"]["bbox_2d"]["minItems"],
            json!(4)
        );
        // Key order as written in the YAML (image before bbox_2d).
        let keys: Vec<_> = zoom["function"]["parameters"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, vec!["image", "bbox_2d"]);
        // The shipped instruction schemas are the built-in ones.
        let ins = ToolRegistry::from_yaml_file(configs_dir().join("instruction.yaml")).unwrap();
        for (check, _, name, _) in crate::INSTRUCTION_CHECKS {
            assert_eq!(ins.get(name).unwrap().schema(), &check.default_schema(), "{name}");
        }
        assert_eq!(
            ToolRegistry::from_yaml_file(configs_dir().join("zoom.yaml"))
                .unwrap()
                .schemas()[0],
            ImageZoomInTool::default_schema()
        );
        let doc = ToolRegistry::from_yaml_file(configs_dir().join("document.yaml")).unwrap();
        assert_eq!(
            doc.schemas(),
            vec![
                DocPageSearchTool::default_schema(),
                DocPageByIndexTool::default_schema()
            ]
        );
    }

    #[test]
    fn system_prompt_matches_chat_template() {
        let reg = ToolRegistry::from_yaml_file(configs_dir().join("all.yaml")).unwrap();
        let schemas = reg.schemas();
        let rendered = armt_processing::render_chat(&[], Some(&schemas), false);
        let want = format!("<|im_start|>system\n{}<|im_end|>\n", system_prompt(&schemas));
        assert_eq!(rendered, want);
        assert!(want.contains("\"minimum\": 0, \"maximum\": 1000"));
    }

    fn load(yaml: &str) -> Result<ToolRegistry, ToolError> {
        ToolRegistry::from_yaml_str(yaml, Path::new("t.yaml"))
    }

    fn load_err(yaml: &str) -> String {
        load(yaml).unwrap_err().to_string()
    }

    #[test]
    fn config_errors_name_file_and_entry() {
        let e = load_err("tools:\n  - class_name: verl.tools.foo.Bar\n");
        assert!(
            e.starts_with(
                "tool config t.yaml: tools[0] (verl.tools.foo.Bar): unknown tool class `verl.tools.foo.Bar`"
            ),
            "{e}"
        );
        let e = load_err("tools:\n  - class_name: ImageZoomInTool\n    config: {max_pixel: 3}\n");
        assert!(
            e.starts_with(
                "tool config t.yaml: tools[0] (ImageZoomInTool): config: unknown field `max_pixel`"
            ),
            "{e}"
        );
        let e = load_err("tools:\n  - class_name: ImageZoomInTool\n    confg: {}\n");
        assert!(
            e.starts_with("tool config t.yaml: tools[0]: unknown field `confg`"),
            "{e}"
        );
        let e = load_err("tools:\n  - class_name: ImageZoomInTool\n    config: {type: mcp}\n");
        assert!(
            e.ends_with("config: type `mcp` is not supported (only `native`)"),
            "{e}"
        );
        let e = load_err("tools:\n  - class_name: DocPageSearchTool\n    config: {scorer: clip}\n");
        assert!(
            e.ends_with("config: unknown scorer `clip` (built in: bm25)"),
            "{e}"
        );
        let e = load_err("tools:\n  - class_name: NoArabicNumberTool\n    tool_schema: {type: function, function: {name: f, description: d, parameters: {type: object, properties: {a: {type: string}}, required: [b]}}}\n");
        assert_eq!(e, "tool config t.yaml: tools[0] (f, NoArabicNumberTool): tool `f`: required parameter `b` is not in properties");
        let e = load_err("tools:\n  - class_name: NoArabicNumberTool\n  - class_name: verl.tools.instruction_following_tool.NoArabicNumberTool\n");
        assert!(
            e.ends_with("duplicate tool name `check_whether_has_no_arabic_number_in_response`"),
            "{e}"
        );
        let e = ToolRegistry::from_yaml_file("/nonexistent/x.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read tool config /nonexistent/x.yaml"),
            "{e}"
        );
        // Built-in schemas when none is given; short and dotted class names.
        let r = load("tools:\n  - class_name: ImageZoomInTool\n  - class_name: verl.tools.doc_page_tools.DocPageByIndexTool\n    config: {type: native, output: both}\n").unwrap();
        assert_eq!(
            r.names(),
            vec!["image_zoom_in_tool", "doc_page_retrieval_by_index"]
        );
    }

    struct Panicky(Value);
    impl Tool for Panicky {
        fn name(&self) -> &str {
            "panicky"
        }
        fn schema(&self) -> &Value {
            &self.0
        }
        fn execute(&self, _: InstanceId, _: &Value, _: &ToolContext) -> ToolOutput {
            panic!("boom")
        }
    }

    #[test]
    fn call_never_panics_and_registers_observations() {
        let mut reg = load("tools:\n  - class_name: ImageZoomInTool\n").unwrap();
        reg.register(Box::new(Panicky(json!({"type": "function", "function": {"name": "panicky", "description": "", "parameters": {"type": "object", "properties": {}}}}))))
            .unwrap();
        let mut ctx = ToolContext::new();
        ctx.add_image("original_image", Arc::new(DynamicImage::new_rgb8(500, 500)));
        let call = |name: &str, args: Value| ParsedToolCall {
            name: name.into(),
            arguments: args,
        };
        let o = reg.call(&call("nope", json!({})), &mut ctx);
        assert_eq!(
            (o.text.as_str(), o.success, o.reward),
            ("Error: Unknown tool 'nope'", false, -0.05)
        );
        let o = reg.call(&call("panicky", json!({})), &mut ctx);
        assert_eq!(o.text, "Error when executing tool: boom");
        let o = reg.call(&call("image_zoom_in_tool", json!([1])), &mut ctx);
        assert_eq!(
            o.text,
            "Error when executing tool: the arguments must be a JSON object."
        );
        let args = json!({"image": "original_image", "bbox_2d": [0, 0, 500, 500]});
        let o = reg.call(&call("image_zoom_in_tool", args.clone()), &mut ctx);
        assert!(
            o.success
                && o.text.starts_with(
                    "This is the zoom-in image `observation_1`(zoomed in on the image original_image)"
                )
        );
        assert_eq!(o.image_keys, vec!["observation_1"]);
        // The observation can be zoomed into next.
        let o = reg.call(
            &call(
                "image_zoom_in_tool",
                json!({"image": "observation_1", "bbox_2d": [0, 0, 500, 500]}),
            ),
            &mut ctx,
        );
        assert!(
            o.text.starts_with(
                "This is the zoom-in image `observation_2`(zoomed in on the image observation_1)"
            ),
            "{}",
            o.text
        );
        assert_eq!(o.image_keys, vec!["observation_2"]);
        assert_eq!(o.metrics["tool"], json!("image_zoom_in_tool"));
        // From the assistant text.
        assert!(reg.handle_turn("<answer>1</answer>", &mut ctx).is_none());
        let (c, o) = reg
            .handle_turn(
                "<tool_call>{\"name\": \"image_zoom_in_tool\"}</tool_call>",
                &mut ctx,
            )
            .unwrap();
        assert!(c.is_none() && !o.success && o.text.starts_with("Error: the tool call needs \"arguments\""));
        let (c, o) = reg.handle_turn("<tool_call>\n{\"name\": \"image_zoom_in_tool\", \"arguments\": {\"image\": \"original_image\"}}\n</tool_call>", &mut ctx).unwrap();
        assert_eq!(c.unwrap().name, "image_zoom_in_tool");
        assert_eq!(o.text, "Error: bbox_2d must be a list of 4 numbers, got None.");
        assert_eq!(ctx.observation_count(), 2);
    }

    #[test]
    fn image_placeholder_stripped() {
        let reg = ToolRegistry::from_yaml_file(configs_dir().join("document.yaml")).unwrap();
        let mut ctx = ToolContext::new();
        ctx.set_document_with_images(
            armt_data::Document {
                name: "d".into(),
                pages: vec![armt_data::DocumentPage {
                    image: "x".into(),
                    text: "cats".into(),
                }],
            },
            vec![Arc::new(DynamicImage::new_rgb8(10, 10))],
        );
        let o = reg.call(
            &ParsedToolCall {
                name: "doc_page_retrieval_by_query".into(),
                arguments: json!({"filename": "d", "query": "<image>\ncats<image>"}),
            },
            &mut ctx,
        );
        assert!(o.success, "{}", o.text);
        assert!(
            o.text
                .starts_with("Concatenated page images for query 'cats' in 'd': pages [1]."),
            "{}",
            o.text
        );
        assert_eq!(o.image_keys, vec!["observation_1"]);
    }

    #[test]
    fn parallel_rollouts() {
        use rayon::prelude::*;
        let reg = ToolRegistry::from_yaml_file(configs_dir().join("all.yaml")).unwrap();
        let results: Vec<(String, String)> = (0..32)
            .into_par_iter()
            .map(|i| {
                let mut ctx = ToolContext::new();
                ctx.add_image("original_image", Arc::new(DynamicImage::new_rgb8(200 + i, 200)));
                ctx.set_text("text_0", format!("{i} cats."));
                let z = reg.call(
                    &ParsedToolCall {
                        name: "image_zoom_in_tool".into(),
                        arguments: json!({"image": "original_image", "bbox_2d": [0, 0, 1000, 1000]}),
                    },
                    &mut ctx,
                );
                let v = reg.call(
                    &ParsedToolCall {
                        name: "check_whether_has_no_arabic_number_in_response".into(),
                        arguments: json!({"response": "text_0"}),
                    },
                    &mut ctx,
                );
                (z.image_keys[0].clone(), v.text)
            })
            .collect();
        for (i, (k, t)) in results.iter().enumerate() {
            assert_eq!(k, "observation_1");
            assert_eq!(
                t,
                &format!("Check result: False\nReason: the response contains the number \"{i}\".")
            );
        }
    }
}
