//! The Cedar schema that policies are written and validated against: a fixed
//! base ([`BASE_SCHEMA`]) plus one action per tool, whose `context.input` is
//! generated from the tool's JSON Schema.

use std::fmt::Write as _;

use serde_json::Value;

use crate::ToolDecl;

/// The part of the schema that does not depend on the tools: the entity
/// types, the `Time` and `Turn` records every tool context carries, and the
/// `call_tool` action group every tool action belongs to.
pub const BASE_SCHEMA: &str = r#"// The caller: a session, of an agent, of a tenant.
entity Tenant;
entity Agent in [Tenant];
entity Session in [Agent] {
  agent: String,
  tenant: String,
};

// What is called: a tool, served by a tool server (an MCP server's name, or
// "builtin", "sandbox", "http").
entity ToolServer;
entity Tool in [ToolServer];

// When the call is made (UTC). weekday: 0 = Monday .. 6 = Sunday.
type Time = { unix: Long, hour: Long, weekday: Long };

// What the current turn has spent so far.
type Turn = { steps: Long, input_tokens: Long, output_tokens: Long };

// Every tool action is a member of this group, so that
// `action in Action::"call_tool"` matches any tool call.
action "call_tool";
"#;

/// JSON Schemas nested deeper than this are cut off (the deeper parts are
/// left out of the record, as if unmappable).
const MAX_DEPTH: usize = 16;

/// The Cedar type a JSON Schema maps to.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Shape {
    Long,
    /// JSON Schema `number`: Cedar's `decimal` (4 fractional digits).
    Decimal,
    String,
    Bool,
    Set(Box<Shape>),
    Record(Vec<Attr>),
}

/// One attribute of a record.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Attr {
    pub name: String,
    pub shape: Shape,
    pub required: bool,
}

/// The record type of a tool's `context.input`. Its top level is always a
/// record, empty when the schema declares no usable properties.
pub(crate) fn input_shape(input_schema: &Value) -> Shape {
    match object_shape(input_schema, 0) {
        Some(shape) => shape,
        None => Shape::Record(Vec::new()),
    }
}

/// The Cedar type of `schema`, and whether it allows `null`; `None` when it
/// cannot be mapped.
fn shape_of(schema: &Value, depth: usize) -> Option<(Shape, bool)> {
    if depth > MAX_DEPTH {
        return None;
    }
    // `"type": ["string", "null"]` (common for optional fields) is the
    // nullable form of a single type; any other union is unmappable.
    let (ty, nullable) = match schema.get("type")? {
        Value::String(t) => (t.as_str(), false),
        Value::Array(types) => {
            let mut non_null = types.iter().filter(|t| t.as_str() != Some("null"));
            let ty = non_null.next()?.as_str()?;
            if non_null.next().is_some() {
                return None;
            }
            (ty, types.len() > 1)
        }
        _ => return None,
    };
    let shape = match ty {
        "integer" => Shape::Long,
        "number" => Shape::Decimal,
        "string" => Shape::String,
        "boolean" => Shape::Bool,
        "array" => Shape::Set(Box::new(shape_of(schema.get("items")?, depth + 1)?.0)),
        "object" => object_shape(schema, depth)?,
        _ => return None,
    };
    Some((shape, nullable))
}

/// The record of an object schema with `properties`.
fn object_shape(schema: &Value, depth: usize) -> Option<Shape> {
    let properties = schema.get("properties")?.as_object()?;
    let required: Vec<&str> = match schema.get("required") {
        Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let attrs = properties
        .iter()
        .filter_map(|(name, prop)| {
            let (shape, nullable) = shape_of(prop, depth + 1)?;
            Some(Attr { name: name.clone(), shape, required: required.contains(&name.as_str()) && !nullable })
        })
        .collect();
    Some(Shape::Record(attrs))
}

/// The full schema for `tools`, in Cedar schema syntax: [`BASE_SCHEMA`]
/// followed by one action per tool. This is what policies are validated
/// against (together with any extra schema the tenant uploaded).
///
/// A tool's `context.input` record comes from its JSON Schema:
/// `integer` → `Long`; `number` → `decimal` (compare with `.lessThan()`,
/// `.greaterThan()`; arguments are rounded to 4 fractional digits);
/// `string` → `String`; `boolean` → `Bool`; `array` with `items` →
/// `Set<…>`; `object` with `properties` → a record. Properties not in
/// `required` are optional (test them with `has`), and so are nullable ones
/// (`"type": [T, "null"]`). Anything else (`oneOf`, `$ref`, no `type`, an
/// object without `properties`, nesting deeper than 16) is left out, so
/// policies cannot refer to it. Attribute names are always quoted, so any
/// property name works; names that are not identifiers are read as
/// `context.input["dry-run"]`.
pub fn schema_text(tools: &[ToolDecl]) -> String {
    let mut out = String::from(BASE_SCHEMA);
    for tool in tools {
        let input = render(&input_shape(&tool.input_schema), 2);
        // `write!` to a String cannot fail.
        let _ = write!(
            out,
            "\naction {} in [\"call_tool\"] appliesTo {{\n  principal: [Session],\n  resource: [Tool],\n  context: {{\n    input: {input},\n    tool: String,\n    server: String,\n    agent: String,\n    time: Time,\n    turn: Turn,\n  }},\n}};\n",
            quote(&tool.name)
        );
    }
    out
}

/// `shape` in Cedar schema syntax; `level` is the indentation level of the
/// line it starts on.
fn render(shape: &Shape, level: usize) -> String {
    match shape {
        Shape::Long => "Long".into(),
        Shape::Decimal => "decimal".into(),
        Shape::String => "String".into(),
        Shape::Bool => "Bool".into(),
        Shape::Set(item) => format!("Set<{}>", render(item, level)),
        Shape::Record(attrs) if attrs.is_empty() => "{}".into(),
        Shape::Record(attrs) => {
            let pad = "  ".repeat(level + 1);
            let mut out = String::from("{\n");
            for a in attrs {
                // Attribute names are always quoted, so that any property
                // name (with dashes, dots, or a Cedar keyword) is valid.
                let opt = if a.required { "" } else { "?" };
                let _ = writeln!(out, "{pad}{}{opt}: {},", quote(&a.name), render(&a.shape, level + 1));
            }
            out.push_str(&"  ".repeat(level));
            out.push('}');
            out
        }
    }
}

/// `s` as a Cedar string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
