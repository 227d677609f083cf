//! Param definitions and their schema check, as a DRP endpoint applies them
//! when a machine's param is set.
//!
//! A value set on a machine (`POST /api/v3/machines/<uuid>/params/<key>`,
//! what `drpcli machines set UUID param KEY to VALUE` sends) is checked
//! against the schema of the param of that name, if one is defined; an
//! undefined param takes anything. A value that fails is refused and the
//! machine is unchanged: the frontend's param mutator patches the machine,
//! the machine's validation (`ValidateParams`, "Key '%s': invalid val
//! '%v': %v") fails the patch, and the answer is that error with code
//! `409` and `Type` the request's method (frontend/params.go
//! `makeParamEndpoints`, backend/param.go `ValidateParams` and
//! `ValidateDecodedValue`, hartsock/provision, July 2019). The schema check
//! is gojsonschema's; only the keywords DRP's stock and imprint's params use
//! are modelled here: `type` and `enum`.

use serde_json::{Value, json};

/// The params RackN's image-deploy plugin defines that imprint reads,
/// `{name: {"Schema": …}}`, from provision-plugins v4.8.0
/// `cmds/image-deploy/content/params/image-deploy.*.yaml`. With the plugin
/// installed (common), `image-type` is an enum without `dd-zst`, and
/// `install-disk` has a default, so `ParamExists` is always true for it.
pub fn image_deploy_params() -> Value {
    json!({
        "image-deploy/image-type": {"Schema": {
            "type": "string",
            "enum": ["tgz", "dd-tgz", "dd-txz", "dd-tbz", "dd-tar", "dd-bz2", "dd-gz", "dd-xz", "dd-raw"],
        }},
        "image-deploy/install-disk": {"Schema": {"type": "string", "default": "/dev/sda"}},
        "image-deploy/image-file": {"Schema": {"type": "string"}},
        "image-deploy/image-url": {"Schema": {"type": "string"}},
    })
}

/// Checks `value` against `schema` (`type`, `enum`); the error is
/// gojsonschema's wording, as DRP passes it on.
pub fn check(schema: &Value, value: &Value) -> Result<(), String> {
    if let Some(kind) = schema.get("type").and_then(Value::as_str) {
        let typed = match kind {
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "object" => value.is_object(),
            "array" => value.is_array(),
            _ => true,
        };
        if !typed {
            return Err(format!("(root): Invalid type. Expected: {kind}"));
        }
    }
    if let Some(choices) = schema.get("enum").and_then(Value::as_array)
        && !choices.contains(value)
    {
        let allowed: Vec<String> = choices.iter().map(Value::to_string).collect();
        return Err(format!(
            "(root): (root) must be one of the following: {}",
            allowed.join(", ")
        ));
    }
    Ok(())
}

/// The error DRP answers a refused param set with: the machine's
/// validation message, `409`, `Type` the method.
pub fn refusal(method: &str, uuid: &str, key: &str, value: &Value, why: &str) -> (u16, Value) {
    // Go's %v of a string is the bare string.
    let shown = value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned);
    (
        409,
        json!({
            "Model": "machines",
            "Key": uuid,
            "Type": method,
            "Messages": [format!("Key '{key}': invalid val '{shown}': {why}")],
            "Code": 409,
        }),
    )
}
