//! imprint's settings as DRP params, generated from [`imprint::spec::PARAMS`]
//! so the content pack, the `imprint.json` template and the README table
//! cannot drift from what PID 1 accepts.

use imprint::spec::{PARAMS, ParamDef};
use serde_json::{Value, json};

/// imprint parameters that DRP already has params for: the content pack
/// does not define `imprint/<name>` for these, and `imprint.json` fills them
/// from the DRP side named here.
pub const FROM_DRP: &[(&str, &str)] = &[
    (
        "url",
        "`image-deploy/image-url`, else `{{.ProvisionerURL}}/` + `image-deploy/image-file`",
    ),
    ("disk", "`image-deploy/install-disk`"),
    ("hostname", "the machine's `Name`"),
    ("ssh-key", "`access-keys` (sent as `access-keys`)"),
    (
        "config",
        "not needed: the rendered `imprint.json` is the config",
    ),
    (
        "link-timeout",
        "`kernel-options` (`imprint.link-timeout=`): the network comes up before `imprint.json` is fetched",
    ),
];

/// The DRP param name for an imprint parameter.
pub fn drp_name(def: &ParamDef) -> String {
    format!("imprint/{}", def.name)
}

/// The imprint parameters that become `imprint/<name>` DRP params.
pub fn imprint_params() -> impl Iterator<Item = &'static ParamDef> {
    PARAMS
        .iter()
        .filter(|def| !FROM_DRP.iter().any(|(name, _)| *name == def.name))
}

/// The JSON schema DRP checks a value against. The type follows what
/// `DeploySpec::apply_json` turns into the parameter's text: booleans
/// become `1`/`0`, numbers their decimal form.
pub fn schema(def: &ParamDef) -> Value {
    match def.values {
        "0 | 1" => json!({"type": "boolean"}),
        "N" => json!({"type": "integer", "minimum": 0}),
        "PORT" => json!({"type": "integer", "minimum": 1, "maximum": 65535}),
        values => {
            let choices: Vec<&str> = values.split(" | ").collect();
            let is_enum = choices.len() > 1
                && choices.iter().all(|c| {
                    !c.is_empty() && c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '!')
                });
            if is_enum {
                json!({"type": "string", "enum": choices})
            } else {
                json!({"type": "string"})
            }
        }
    }
}

/// The first sentence of the help text, for DRP's one-line `Description`.
fn first_sentence(help: &str) -> &str {
    match help.find(". ") {
        Some(end) => &help[..=end],
        None => help,
    }
}

/// The `params/imprint.<name>.yaml` object for one parameter. No schema
/// default on purpose: DRP's `ParamExists` is true for a param with a
/// default, and imprint's own default (documented here) must stay the one
/// that applies when the operator sets nothing.
pub fn param_object(def: &ParamDef) -> Value {
    let unset = match FALLBACKS.iter().find(|(name, _)| *name == def.name) {
        Some((_, stock)) => format!(
            "`{stock}` when that is set, else {} (imprint's own default; `imprint.json` \
             leaves the field out)",
            def.default
        ),
        None => format!(
            "{} (imprint's own default; `imprint.json` leaves the field out)",
            def.default
        ),
    };
    let documentation = format!(
        "{help}\n\nValues: `{values}`. When unset: {unset}.\n\nRendered into the machine's \
         `imprint.json` as `\"{name}\"`; the same setting as `imprint.{name}=` on the kernel \
         command line.\n",
        help = def.help,
        values = def.values,
        name = def.name,
    );
    json!({
        "Name": drp_name(def),
        "Description": first_sentence(def.help),
        "Documentation": documentation,
        "Schema": schema(def),
        "Meta": {"icon": "hdd", "color": "blue", "title": "imprint"},
    })
}

/// Stock params an `imprint/<name>` param stands in for when it is unset:
/// `imprint/format` exists because image-deploy's `image-deploy/image-type`
/// is an enum without `dd-zst` or imprint's other names
/// (`params/image-deploy.image-type.yaml`, provision-plugins v4.8.0), so
/// DRP refuses those values there.
pub const FALLBACKS: &[(&str, &str)] = &[("format", "image-deploy/image-type")];

/// The `imprint.json` lines for the generated params, each guarded by
/// `ParamExists` and JSON-encoded by DRP (`ParamAsJSON`); an
/// `imprint/<name>` with a [`FALLBACKS`] entry wins over the stock param.
pub fn spec_template_lines() -> String {
    let mut lines = String::new();
    for def in imprint_params() {
        if let Some((_, stock)) = FALLBACKS.iter().find(|(name, _)| *name == def.name) {
            lines.push_str(&format!(
                "{{{{- if .ParamExists \"{param}\" }}}},\n  \"{name}\": {{{{ .ParamAsJSON \"{param}\" }}}}\n\
                 {{{{- else if .ParamExists \"{stock}\" }}}},\n  \"{name}\": {{{{ .ParamAsJSON \"{stock}\" }}}}\n",
                param = drp_name(def),
                name = def.name,
            ));
            lines.push_str("{{- end }}\n");
            continue;
        }
        lines.push_str(&format!(
            "{{{{- if .ParamExists \"{param}\" }}}},\n  \"{name}\": {{{{ .ParamAsJSON \"{param}\" }}}}\n",
            param = drp_name(def),
            name = def.name,
        ));
        lines.push_str("{{- end }}\n");
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drp_side_parameter_is_one_imprint_knows() {
        for (name, _) in FROM_DRP {
            assert!(
                PARAMS.iter().any(|def| def.name == *name),
                "{name} is not in imprint::spec::PARAMS"
            );
        }
        let generated = imprint_params().count();
        assert_eq!(generated + FROM_DRP.len(), PARAMS.len());
    }

    #[test]
    fn schemas_follow_the_values_column() {
        let find = |name: &str| PARAMS.iter().find(|d| d.name == name).unwrap();
        assert_eq!(schema(find("grow")), json!({"type": "boolean"}));
        assert_eq!(schema(find("retries"))["type"], "integer");
        assert_eq!(schema(find("status-port"))["maximum"], 65535);
        assert_eq!(
            schema(find("on-success"))["enum"],
            json!(["kexec", "kexec!", "reboot", "poweroff", "none"])
        );
        // retry:N is not a fixed word, so on-failure is free text.
        assert_eq!(schema(find("on-failure")), json!({"type": "string"}));
    }

    #[test]
    fn params_carry_documentation_and_no_default() {
        for def in imprint_params() {
            let object = param_object(def);
            assert_eq!(object["Name"], format!("imprint/{}", def.name));
            assert!(object["Documentation"].as_str().unwrap().contains(def.help));
            assert!(object["Schema"].get("default").is_none(), "{}", def.name);
        }
    }

    #[test]
    fn format_prefers_imprints_param_over_image_deploys() {
        let lines = spec_template_lines();
        assert!(lines.contains(
            "{{- if .ParamExists \"imprint/format\" }},\n  \"format\": {{ .ParamAsJSON \"imprint/format\" }}\n\
             {{- else if .ParamExists \"image-deploy/image-type\" }},\n  \"format\": {{ .ParamAsJSON \"image-deploy/image-type\" }}\n{{- end }}\n"
        ));
        let format = PARAMS.iter().find(|d| d.name == "format").unwrap();
        let docs = param_object(format)["Documentation"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            docs.contains("When unset: `image-deploy/image-type` when that is set, else auto"),
            "{docs}"
        );
    }

    #[test]
    fn template_lines_guard_and_encode_each_param() {
        let lines = spec_template_lines();
        assert!(lines.contains(
            "{{- if .ParamExists \"imprint/checksum\" }},\n  \"checksum\": {{ .ParamAsJSON \"imprint/checksum\" }}\n{{- end }}\n"
        ));
        assert!(!lines.contains("imprint/url"));
    }
}
