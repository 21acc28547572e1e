//! Tool names on the wire. agentrt names tools with dots (`kv.get`), which
//! OpenAI and Anthropic do not accept (`^[a-zA-Z0-9_-]{1,64}$`); dots are
//! sent as `__` and mapped back on the way in.

/// `kv.get` → `kv__get`.
pub fn to_wire_name(name: &str) -> String {
    name.replace('.', "__")
}

/// `kv__get` → `kv.get`.
pub fn from_wire_name(name: &str) -> String {
    name.replace("__", ".")
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        assert_eq!(super::to_wire_name("orders.create"), "orders__create");
        assert_eq!(super::from_wire_name("orders__create"), "orders.create");
    }
}
