//! Parsing, naming and validating a tenant's policies.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{Authorizer, Entities, PolicyId, PolicySet, Schema, SchemaFragment, ValidationMode, Validator};
use miette::Diagnostic;

use crate::schema::{input_shape, schema_text, Shape};
use crate::{Policies, PolicyError, ToolDecl};

/// Everything [`Policies::decide`] needs, built once per policy upload.
pub(crate) struct Compiled {
    pub pset: PolicySet,
    pub schema: Schema,
    /// Policy ids in the order they appear in the text.
    pub ids: Vec<String>,
    /// Position of each id in `ids`, to report ids in text order.
    pub order: HashMap<String, usize>,
    /// The action entities of the schema, with their groups.
    pub actions: Entities,
    /// Ids of the actions the schema declares (tools and extra schema).
    pub declared: HashSet<String>,
    /// `context.input` types of the tools in `tools`.
    pub inputs: HashMap<String, Shape>,
    pub authorizer: Authorizer,
}

impl Policies {
    /// Parses `text` (Cedar policy syntax), names each policy by its
    /// `@id("...")` annotation (fallback: Cedar's own `policy0`, `policy1`,
    /// ...), and validates every policy in strict mode against the schema
    /// built from `tools` ([`schema_text`]) plus the optional Cedar-syntax
    /// fragment `extra_schema`, which may declare further actions (for tools
    /// not listed) and may use the base types (`Session`, `Tool`, `Time`,
    /// `Turn`).
    ///
    /// Errors carry Cedar's messages with policy ids and `line:column`
    /// locations in `text`. Duplicate ids, templates and `@approval` on a
    /// `forbid` are rejected too.
    pub fn compile(text: &str, tools: &[ToolDecl], extra_schema: Option<&str>) -> Result<Policies, PolicyError> {
        let schema = build_schema(tools, extra_schema)?;
        let parsed = PolicySet::from_str(text).map_err(|e| PolicyError::Syntax(render_in(&e, Some(text))))?;
        if let Some(t) = parsed.templates().next() {
            return Err(PolicyError::Template(t.annotation("id").unwrap_or(AsRef::<str>::as_ref(t.id())).to_owned()));
        }

        // Cedar names policies policy0, policy1, ... in text order; the set
        // itself is unordered.
        let mut policies: Vec<_> = parsed.policies().collect();
        policies.sort_by_key(|p| AsRef::<str>::as_ref(p.id()).strip_prefix("policy").and_then(|n| n.parse::<usize>().ok()));
        let mut pset = PolicySet::new();
        let mut ids = Vec::with_capacity(policies.len());
        for p in policies {
            let id = p.annotation("id").unwrap_or(AsRef::<str>::as_ref(p.id())).to_owned();
            if id.is_empty() {
                return Err(PolicyError::Annotation { id: p.id().to_string(), message: "@id must not be empty".into() });
            }
            if p.annotation("approval").is_some() && p.effect() == cedar_policy::Effect::Forbid {
                let message = "@approval only has a meaning on permit policies".into();
                return Err(PolicyError::Annotation { id, message });
            }
            if ids.contains(&id) {
                return Err(PolicyError::DuplicateId(id));
            }
            pset.add(p.new_id(PolicyId::new(&id))).map_err(|_| PolicyError::DuplicateId(id.clone()))?;
            ids.push(id);
        }

        let validation = Validator::new(schema.clone()).validate(&pset, ValidationMode::Strict);
        if !validation.validation_passed() {
            let errors: Vec<String> = validation.validation_errors().map(|e| render(e)).collect();
            return Err(PolicyError::Invalid(errors.join("\n")));
        }

        let actions = schema.action_entities().map_err(|e| PolicyError::Schema(render(&e)))?;
        let declared = schema.actions().map(|a| a.id().unescaped().to_owned()).collect();
        let inputs = tools.iter().map(|t| (t.name.clone(), input_shape(&t.input_schema))).collect();
        let order = ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect();
        let compiled = Compiled { pset, schema, ids, order, actions, declared, inputs, authorizer: Authorizer::new() };
        Ok(Policies { inner: Arc::new(compiled) })
    }

    /// Ids of the policies, in the order they appear in the text.
    pub fn ids(&self) -> Vec<String> {
        self.inner.ids.clone()
    }
}

/// The generated schema for `tools` combined with the tenant's extra fragment.
fn build_schema(tools: &[ToolDecl], extra_schema: Option<&str>) -> Result<Schema, PolicyError> {
    let mut fragments = Vec::with_capacity(2);
    // The generated part fails only on input Cedar cannot express at all.
    let generated = schema_text(tools);
    let (fragment, _warnings) = SchemaFragment::from_cedarschema_str(&generated).map_err(|e| PolicyError::Schema(render(&e)))?;
    fragments.push(fragment);
    if let Some(extra) = extra_schema {
        let (fragment, _warnings) =
            SchemaFragment::from_cedarschema_str(extra).map_err(|e| PolicyError::Schema(format!("in the extra schema: {}", render(&e))))?;
        fragments.push(fragment);
    }
    Schema::from_schema_fragments(fragments).map_err(|e| PolicyError::Schema(render(&e)))
}

/// A Cedar diagnostic as text: its message, where it points
/// (`line:column` and the text there), its help, and the same for every
/// related diagnostic (Cedar reports further parse errors that way).
pub(crate) fn render(d: &dyn Diagnostic) -> String {
    render_in(d, None)
}

/// [`render`] for errors in the policy text `policies`: each message is
/// prefixed with the policy it points into, as validation errors are.
fn render_in(d: &dyn Diagnostic, policies: Option<&str>) -> String {
    let mut out = String::new();
    render_one(d, policies, &mut out);
    if let Some(related) = d.related() {
        for r in related {
            out.push('\n');
            render_one(r, policies, &mut out);
        }
    }
    out
}

fn render_one(d: &dyn Diagnostic, policies: Option<&str>, out: &mut String) {
    let offset = d.labels().and_then(|mut l| l.next()).map(|l| l.offset());
    if let Some(id) = policies.zip(offset).and_then(|(text, offset)| policy_at(text, offset)) {
        let _ = write!(out, "for policy `{id}`, ");
    }
    // `write!` to a String cannot fail.
    let _ = write!(out, "{d}");
    if let (Some(src), Some(labels)) = (d.source_code(), d.labels()) {
        for label in labels {
            let Ok(span) = src.read_span(label.inner(), 0, 0) else { continue };
            let snippet = String::from_utf8_lossy(span.data());
            let snippet: String = snippet.chars().take(80).collect();
            let _ = write!(out, "\n  at {}:{}: `{}`", span.line() + 1, span.column() + 1, snippet.trim());
            if let Some(text) = label.label() {
                let _ = write!(out, " ({text})");
            }
        }
    }
    if let Some(help) = d.help() {
        let _ = write!(out, "\n  help: {help}");
    }
}

/// The id of the policy that the byte `offset` of `text` falls in, for
/// errors Cedar reports before it knows the policies: its `@id`, or
/// `policy<N>` as Cedar would name it. Statements end at `;` outside
/// strings and comments.
fn policy_at(text: &str, offset: usize) -> Option<String> {
    let (mut start, mut count) = (0, 0);
    let (mut in_string, mut escaped, mut in_comment) = (false, false, false);
    let mut chars = text.char_indices().take_while(|&(i, _)| i < offset).peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            _ if in_comment => in_comment = c != '\n',
            _ if in_string && escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            _ if in_string => {}
            '/' if chars.peek().is_some_and(|&(_, n)| n == '/') => in_comment = true,
            ';' => (start, count) = (i + 1, count + 1),
            _ => {}
        }
    }
    let statement = text.get(start..offset)?;
    let id = statement.find("@id").and_then(|at| {
        let rest = statement[at + 3..].trim_start().strip_prefix('(')?.trim_start().strip_prefix('"')?;
        rest.find('"').map(|end| rest[..end].to_owned())
    });
    Some(id.unwrap_or_else(|| format!("policy{count}")))
}
