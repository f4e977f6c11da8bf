//! The Operation every create/update/delete answers with.

use serde_json::Value;

#[derive(Clone, Debug)]
pub struct Operation {
    pub id: String,
    pub description: String,
    /// Absent on the wire means false.
    pub done: bool,
    pub metadata: Value,
    pub response: Option<Value>,
    /// A `google.rpc.Status`; may be set before `done` while a rollback runs.
    pub error: Option<Value>,
}

impl Operation {
    pub fn from_json(v: &Value) -> Option<Operation> {
        let id = v.get("id")?.as_str()?.to_string();
        Some(Operation {
            id,
            description: v.get("description").and_then(Value::as_str).unwrap_or("operation").to_string(),
            done: v.get("done").and_then(Value::as_bool).unwrap_or(false),
            metadata: v.get("metadata").cloned().unwrap_or(Value::Null),
            response: v.get("response").cloned().filter(|r| !r.is_null()),
            error: v.get("error").cloned().filter(|e| !e.is_null()),
        })
    }

    /// The id of the resource the operation is about: `metadata.<field>`
    /// (networkId, subnetId, securityGroupId, instanceId), else `response.id`.
    pub fn resource_id(&self, field: &str) -> Option<String> {
        self.metadata
            .get(field)
            .and_then(Value::as_str)
            .or_else(|| self.response.as_ref().and_then(|r| r.get("id")).and_then(Value::as_str))
            .map(str::to_string)
    }
}
