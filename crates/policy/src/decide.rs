//! Deciding one tool call: building the Cedar request (entities and
//! context) and turning Cedar's response into a [`Decision`].

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    AuthorizationError, Context, Decision as CedarDecision, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    Request, RestrictedExpression,
};
use serde_json::{json, Map, Number, Value};

use crate::compile::{render, Compiled};
use crate::schema::Shape;
use crate::{Decision, Policies, ToolCallRequest};

/// Untyped arguments nested deeper than this are dropped.
const MAX_UNTYPED_DEPTH: usize = 32;

impl Policies {
    /// Decides one tool call. Never panics.
    ///
    /// For a tool whose action the schema declares, the arguments are
    /// checked against its declared types first: arguments that do not fit
    /// give [`Decision::Forbid`] with empty `policies` and a reason. For an
    /// undeclared tool (e.g. an MCP tool discovered after the policies were
    /// compiled) the arguments are converted without a schema; policies
    /// that do not name its action (blanket ones, `action in
    /// Action::"call_tool"`) still apply.
    ///
    /// A forbid policy that fails to evaluate counts as matching (fail
    /// closed); a permit policy that fails to evaluate is skipped, as Cedar
    /// does. Both are logged.
    pub fn decide(&self, call: &ToolCallRequest) -> Decision {
        let c = &*self.inner;
        let request = match build_request(c, call) {
            Ok(r) => r,
            Err(reason) => return Decision::Forbid { policies: Vec::new(), reason },
        };
        let entities = match build_entities(c, call) {
            Ok(e) => e,
            Err(reason) => return Decision::Forbid { policies: Vec::new(), reason },
        };
        let response = c.authorizer.is_authorized(&request, &c.pset, &entities);

        let mut failed_forbids = Vec::new();
        let mut failures = Vec::new();
        for err in response.diagnostics().errors() {
            let AuthorizationError::PolicyEvaluationError(e) = err;
            let id = e.policy_id();
            failures.push(render(err));
            if c.pset.policy(id).is_some_and(|p| p.effect() == Effect::Forbid) {
                failed_forbids.push(id.to_string());
            }
        }
        if !failures.is_empty() {
            tracing::warn!(tool = call.tool, session = call.session_id, errors = %failures.join("; "), "policies failed to evaluate");
        }

        let determining = sorted_ids(c, response.diagnostics().reason());
        match response.decision() {
            CedarDecision::Deny if !determining.is_empty() => {
                let reason = format!("forbidden by policy {}", quoted_list(&determining));
                Decision::Forbid { policies: determining, reason }
            }
            _ if !failed_forbids.is_empty() => {
                let reason = format!("forbid policy could not be evaluated, so the call is denied: {}", failures.join("; "));
                failed_forbids.sort_by_key(|id| c.order.get(id).copied());
                Decision::Forbid { policies: failed_forbids, reason }
            }
            CedarDecision::Deny => Decision::NoMatch,
            CedarDecision::Allow => {
                let approvals: Vec<(String, &str)> = determining
                    .iter()
                    .filter_map(|id| c.pset.annotation(&PolicyId::new(id), "approval").map(|text| (id.clone(), text)))
                    .collect();
                if approvals.is_empty() {
                    return Decision::Permit { policies: determining };
                }
                let texts: Vec<String> = approvals
                    .iter()
                    .map(|(id, text)| if text.is_empty() { format!("policy `{id}` requires approval") } else { (*text).to_owned() })
                    .collect();
                Decision::RequireApproval { policies: approvals.into_iter().map(|(id, _)| id).collect(), reason: texts.join("; ") }
            }
        }
    }
}

fn sorted_ids<'a>(c: &Compiled, ids: impl Iterator<Item = &'a PolicyId>) -> Vec<String> {
    let mut ids: Vec<String> = ids.map(ToString::to_string).collect();
    ids.sort_by_key(|id| c.order.get(id).copied());
    ids
}

fn quoted_list(ids: &[String]) -> String {
    ids.iter().map(|id| format!("`{id}`")).collect::<Vec<_>>().join(", ")
}

fn uid(ty: &str, id: &str) -> EntityUid {
    let ty = EntityTypeName::from_str(ty).expect("entity type names of the base schema are valid");
    EntityUid::from_type_name_and_id(ty, EntityId::new(id))
}

/// The Cedar request: principal session, action and resource the tool, and
/// the context, typed by the schema when the action is declared.
fn build_request(c: &Compiled, call: &ToolCallRequest) -> Result<Request, String> {
    let principal = uid("Session", call.session_id);
    let action = uid("Action", call.tool);
    let resource = uid("Tool", call.tool);
    if !c.declared.contains(call.tool) {
        let context = untyped_context(call).map_err(|e| format!("cannot build the context of `{}`: {e}", call.tool))?;
        return Request::new(principal, action, resource, context, None).map_err(|e| render(&e));
    }
    let input = match c.inputs.get(call.tool) {
        Some(shape) => project(call.arguments, shape, "input")?,
        // Declared by the tenant's extra schema: Cedar checks the raw
        // arguments against the declared context.
        None => call.arguments.clone(),
    };
    let mut context = shared_context(call);
    context.insert("input".into(), input);
    let context = Context::from_json_value(Value::Object(context), Some((&c.schema, &action)))
        .map_err(|e| format!("arguments of `{}` do not fit its declared types: {}", call.tool, render(&e)))?;
    Request::new(principal, action, resource, context, Some(&c.schema))
        .map_err(|e| format!("the call of `{}` does not fit the schema: {}", call.tool, render(&e)))
}

/// The context attributes every call has, besides `input`.
fn shared_context(call: &ToolCallRequest) -> Map<String, Value> {
    let unix = call.now_ms.div_euclid(1000);
    let days = unix.div_euclid(86_400);
    let long = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let Value::Object(context) = json!({
        "tool": call.tool,
        "server": call.server,
        "agent": call.agent,
        // 1970-01-01 was a Thursday (3 when Monday is 0).
        "time": { "unix": unix, "hour": unix.rem_euclid(86_400) / 3600, "weekday": (days + 3).rem_euclid(7) },
        "turn": { "steps": long(call.turn.steps), "input_tokens": long(call.turn.input_tokens), "output_tokens": long(call.turn.output_tokens) },
    }) else {
        return Map::new(); // not reached: an object literal is an object
    };
    context
}

/// Fits `value` to the Cedar type `shape`, for Cedar's schema-based JSON
/// parser: keeps only the properties the schema maps (others, and nulls,
/// are left out), makes whole floats integers for `Long`, and writes
/// numbers for `decimal` as decimal strings rounded to 4 places. Anything
/// else is passed on for Cedar to type-check.
fn project(value: &Value, shape: &Shape, path: &str) -> Result<Value, String> {
    Ok(match (shape, value) {
        (Shape::Long, Value::Number(n)) if n.as_i64().is_none() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
            _ => return Err(format!("`{path}` is {n}, which is not an integer that fits a Cedar Long")),
        },
        (Shape::Decimal, Value::Number(n)) => Value::String(decimal_text(n)),
        (Shape::Decimal, other) => return Err(format!("`{path}` should be a number, got {other}")),
        (Shape::Set(item), Value::Array(items)) => {
            let items = items.iter().filter(|v| !v.is_null()).map(|v| project(v, item, path));
            Value::Array(items.collect::<Result<_, _>>()?)
        }
        (Shape::Record(attrs), Value::Object(map)) => {
            let mut out = Map::new();
            for a in attrs {
                if let Some(v) = map.get(&a.name).filter(|v| !v.is_null()) {
                    out.insert(a.name.clone(), project(v, &a.shape, &format!("{path}.{}", a.name))?);
                }
            }
            Value::Object(out)
        }
        (_, v) => v.clone(),
    })
}

/// A JSON number as the text of a Cedar decimal (4 fractional digits at
/// most; Cedar rejects values out of its range).
fn decimal_text(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        format!("{i}.0")
    } else if let Some(u) = n.as_u64() {
        format!("{u}.0")
    } else {
        format!("{:.4}", n.as_f64().unwrap_or(0.0))
    }
}

/// The context of a call to an undeclared tool, built without a schema.
fn untyped_context(call: &ToolCallRequest) -> Result<Context, String> {
    let mut pairs: Vec<(String, RestrictedExpression)> = Vec::with_capacity(6);
    for (k, v) in shared_context(call) {
        if let Some(e) = untyped(&v, 0) {
            pairs.push((k, e));
        }
    }
    let input = untyped(call.arguments, 0).unwrap_or_else(|| RestrictedExpression::new_record([]).expect("an empty record is valid"));
    pairs.push(("input".into(), input));
    Context::from_pairs(pairs).map_err(|e| render(&e))
}

/// Converts JSON to a Cedar value without a schema. Built directly (not
/// through Cedar's JSON format) so that `__entity` / `__extn` keys in
/// arguments are plain record keys, not escapes. Cedar has no null and no
/// float: nulls are dropped; whole numbers become `Long`; other numbers
/// become `decimal` rounded to 4 places, or a string of their JSON text
/// when out of decimal's range. Deeply nested values are dropped.
fn untyped(value: &Value, depth: usize) -> Option<RestrictedExpression> {
    if depth > MAX_UNTYPED_DEPTH {
        return None;
    }
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => RestrictedExpression::new_long(i),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => RestrictedExpression::new_long(f as i64),
            (None, Some(f)) if f.abs() < 9.0e14 => RestrictedExpression::new_decimal(format!("{f:.4}")),
            _ => RestrictedExpression::new_string(n.to_string()),
        },
        Value::Array(items) => RestrictedExpression::new_set(items.iter().filter_map(|v| untyped(v, depth + 1))),
        Value::Object(map) => {
            RestrictedExpression::new_record(map.iter().filter_map(|(k, v)| Some((k.clone(), untyped(v, depth + 1)?)))).ok()?
        }
    })
}

/// The entities of one call: the session and its agent and tenant, the
/// tool and its server, and the actions with their groups (from the
/// schema, plus the called action in `call_tool` when it is undeclared).
fn build_entities(c: &Compiled, call: &ToolCallRequest) -> Result<Entities, String> {
    let tenant = uid("Tenant", call.tenant);
    let agent = uid("Agent", call.agent);
    let server = uid("ToolServer", call.server);
    let attrs = HashMap::from([
        ("agent".to_owned(), RestrictedExpression::new_string(call.agent.to_owned())),
        ("tenant".to_owned(), RestrictedExpression::new_string(call.tenant.to_owned())),
    ]);
    let session = Entity::new(uid("Session", call.session_id), attrs, HashSet::from([agent.clone()])).map_err(|e| render(&e))?;
    let mut entities = vec![
        Entity::new_no_attrs(tenant.clone(), HashSet::new()),
        Entity::new_no_attrs(agent, HashSet::from([tenant])),
        session,
        Entity::new_no_attrs(server.clone(), HashSet::new()),
        Entity::new_no_attrs(uid("Tool", call.tool), HashSet::from([server])),
    ];
    let action = uid("Action", call.tool);
    if c.actions.get(&action).is_none() {
        entities.push(Entity::new_no_attrs(action, HashSet::from([uid("Action", "call_tool")])));
    }
    c.actions.clone().add_entities(entities, None).map_err(|e| render(&e))
}
