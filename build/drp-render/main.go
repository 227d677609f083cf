// drp-render renders and checks imprint's Digital Rebar content with the
// engine DRP itself uses: Go's text/template with sprig's function map, and
// a render context that offers the methods DRP's templates call
// (.Machine.*, .Env.*, .Param, .ParamExists, .ParamExpand, .ParamAsJSON,
// .ProvisionerURL, .ApiURL, .GenerateInfiniteToken, .BootParams).
//
// It is a test helper, built in GOPATH mode against Debian's packaged
// sprig and yaml.v3 (see build/tests/drp_content.rs):
//
//	drp-render validate BUNDLE.yaml CONTENT-DIR
//	drp-render render BUNDLE.yaml CONTEXT.json
//
// validate checks the fields DRP validates when it loads the pack and that
// the directory holds the same objects as the bundle. render prints, as
// JSON, the bootenv's BootParams and every template of the bootenv and the
// task rendered for the machine the context describes.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

const bootenvName = "imprint"

type object = map[string]interface{}

func main() {
	if len(os.Args) != 4 {
		fail("usage: drp-render validate BUNDLE DIR | drp-render render BUNDLE CONTEXT")
	}
	bundle, err := loadYAML(os.Args[2])
	if err != nil {
		fail(err.Error())
	}
	switch os.Args[1] {
	case "validate":
		problems := validate(bundle, os.Args[3])
		if len(problems) > 0 {
			fail(strings.Join(problems, "; "))
		}
		fmt.Println("ok")
	case "render":
		out, err := renderAll(bundle, os.Args[3])
		if err != nil {
			fail(err.Error())
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(out); err != nil {
			fail(err.Error())
		}
	default:
		fail("unknown command " + os.Args[1])
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "drp-render: "+msg)
	os.Exit(1)
}

func loadYAML(file string) (object, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var doc object
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	return doc, nil
}

func asObject(v interface{}) object {
	o, _ := v.(object)
	return o
}

func asList(v interface{}) []interface{} {
	l, _ := v.([]interface{})
	return l
}

func asString(v interface{}) string {
	s, _ := v.(string)
	return s
}

func section(bundle object, name string) object {
	return asObject(asObject(bundle["sections"])[name])
}

// validate: the checks DRP makes when it loads these objects, plus the
// cross references that would make a machine fail at boot time.
func validate(bundle object, dir string) []string {
	var problems []string
	add := func(format string, args ...interface{}) {
		problems = append(problems, fmt.Sprintf(format, args...))
	}
	meta := asObject(bundle["meta"])
	if asString(meta["Name"]) == "" {
		add("meta: Name is missing")
	}
	templates := section(bundle, "templates")
	params := section(bundle, "params")
	for id, t := range templates {
		t := asObject(t)
		if asString(t["ID"]) != id {
			add("templates/%s: ID is %q", id, t["ID"])
		}
		if _, err := template.New(id).Funcs(funcMap()).Parse(asString(t["Contents"])); err != nil {
			add("templates/%s: %v", id, err)
		}
	}
	checkTemplateRefs := func(owner string, list []interface{}) {
		for i, entry := range list {
			e := asObject(entry)
			name := asString(e["Name"])
			if name == "" {
				add("%s: Templates[%d] has no Name", owner, i)
			}
			_, hasID := e["ID"]
			_, hasContents := e["Contents"]
			if hasID == hasContents {
				add("%s: template %s needs exactly one of ID and Contents", owner, name)
			}
			if hasID {
				if _, ok := templates[asString(e["ID"])]; !ok {
					add("%s: template %s refers to unknown ID %v", owner, name, e["ID"])
				}
			}
			if _, ok := e["Path"]; !ok {
				add("%s: template %s has no Path", owner, name)
			}
		}
	}
	envs := section(bundle, "bootenvs")
	env := asObject(envs[bootenvName])
	if env == nil {
		add("bootenvs: %s is missing", bootenvName)
	} else {
		name := asString(env["Name"])
		if name != bootenvName || strings.HasSuffix(name, "-install") {
			add("bootenvs/%s: bad Name %q", bootenvName, name)
		}
		osObject := asObject(env["OS"])
		if asString(osObject["Name"]) == "" {
			add("bootenvs/%s: OS.Name is missing", name)
		}
		arch := asObject(asObject(osObject["SupportedArchitectures"])["amd64"])
		for _, field := range []string{"IsoFile", "Sha256", "Kernel", "BootParams"} {
			if asString(arch[field]) == "" {
				add("bootenvs/%s: OS.SupportedArchitectures.amd64.%s is missing", name, field)
			}
		}
		if len(asString(arch["Sha256"])) != 64 {
			add("bootenvs/%s: Sha256 is not a hex SHA-256", name)
		}
		if len(asList(arch["Initrds"])) == 0 {
			add("bootenvs/%s: OS.SupportedArchitectures.amd64.Initrds is empty", name)
		}
		for _, field := range []string{"RequiredParams", "OptionalParams", "Templates"} {
			if _, ok := env[field].([]interface{}); !ok {
				add("bootenvs/%s: %s is not a list", name, field)
			}
		}
		list := asList(env["Templates"])
		checkTemplateRefs("bootenvs/"+name, list)
		loaders := map[string]bool{}
		for _, e := range list {
			loaders[asString(asObject(e)["Name"])] = true
		}
		for _, loader := range []string{"ipxe", "pxelinux", "grub", "ipxe-mac", "pxelinux-mac", "grub-mac", "kexec", "imprint.json"} {
			if !loaders[loader] {
				add("bootenvs/%s: no %s template", name, loader)
			}
		}
		for _, p := range append(asList(env["OptionalParams"]), asList(env["RequiredParams"])...) {
			if strings.HasPrefix(asString(p), "imprint/") {
				if _, ok := params[asString(p)]; !ok {
					add("bootenvs/%s: param %v is not defined in the pack", name, p)
				}
			}
		}
	}
	for name, p := range params {
		p := asObject(p)
		if asString(p["Name"]) != name {
			add("params/%s: Name is %q", name, p["Name"])
		}
		if asString(p["Documentation"]) == "" || asString(p["Description"]) == "" {
			add("params/%s: Description or Documentation is missing", name)
		}
		if asString(asObject(p["Schema"])["type"]) == "" {
			add("params/%s: Schema has no type", name)
		}
	}
	for name, t := range section(bundle, "tasks") {
		checkTemplateRefs("tasks/"+name, asList(asObject(t)["Templates"]))
	}
	stages := section(bundle, "stages")
	for name, s := range stages {
		s := asObject(s)
		if b := asString(s["BootEnv"]); b != "" && envs[b] == nil {
			add("stages/%s: unknown BootEnv %s", name, b)
		}
		for _, t := range asList(s["Tasks"]) {
			if section(bundle, "tasks")[asString(t)] == nil {
				add("stages/%s: unknown task %v", name, t)
			}
		}
	}
	for name, w := range section(bundle, "workflows") {
		for _, s := range asList(asObject(w)["Stages"]) {
			// complete is DRP's own stage (drp-community-content).
			if stages[asString(s)] == nil && s != "complete" {
				add("workflows/%s: unknown stage %v", name, s)
			}
		}
	}
	problems = append(problems, compareDir(bundle, dir)...)
	sort.Strings(problems)
	return problems
}

// compareDir: the directory `drpcli contents bundle` reads must hold the
// same objects as the bundle.
func compareDir(bundle object, dir string) []string {
	var problems []string
	// Meta fields are `._<Field>.meta` files, read trimmed and skipped when
	// empty (api/content.go FindOrFake, provision v4.8.0).
	meta := object{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return []string{err.Error()}
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasPrefix(name, "._") || !strings.HasSuffix(name, ".meta") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return []string{err.Error()}
		}
		if value := strings.TrimSpace(string(data)); value != "" {
			meta[strings.TrimSuffix(strings.TrimPrefix(name, "._"), ".meta")] = value
		}
	}
	want := object{}
	for k, v := range asObject(bundle["meta"]) {
		if value := strings.TrimSpace(asString(v)); value != "" {
			want[k] = value
		}
	}
	if !reflect.DeepEqual(meta, want) {
		problems = append(problems, "the ._*.meta files differ from the bundle's meta")
	}
	for sectionName, objects := range asObject(bundle["sections"]) {
		entries, err := os.ReadDir(filepath.Join(dir, sectionName))
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		if len(entries) != len(asObject(objects)) {
			problems = append(problems, fmt.Sprintf("%s/ holds %d files for %d objects", sectionName, len(entries), len(asObject(objects))))
		}
		for name, obj := range asObject(objects) {
			file := filepath.Join(dir, sectionName, strings.ReplaceAll(name, "/", ".")+".yaml")
			if sectionName == "templates" {
				data, err := os.ReadFile(filepath.Join(dir, sectionName, name))
				if err != nil || string(data) != asString(asObject(obj)["Contents"]) {
					problems = append(problems, fmt.Sprintf("templates/%s differs from the bundle", name))
				}
				continue
			}
			got, err := loadYAML(file)
			if err != nil || !reflect.DeepEqual(got, asObject(obj)) {
				problems = append(problems, fmt.Sprintf("%s differs from the bundle", file))
			}
		}
	}
	return problems
}

// The machine part of the context, with DRP's field and method names.
type Machine struct {
	UUID, Name, Path, Address, HexAddress, ShortName string
	mac                                              string
}

// MacAddr formats the boot MAC the way DRP's loader paths use it.
func (m *Machine) MacAddr(format ...string) string {
	if m.mac == "" {
		return ""
	}
	mac := strings.ToLower(m.mac)
	switch {
	case len(format) > 0 && (format[0] == "pxelinux" || format[0] == "pxe"):
		return "01-" + strings.ReplaceAll(mac, ":", "-")
	case len(format) > 0 && format[0] == "rpi":
		return strings.ReplaceAll(mac, ":", "-")
	default:
		return mac
	}
}

// Env is the bootenv resolved for amd64.
type Env struct {
	Name, OSName, Kernel string
	Initrds              []string
	provisionerURL       string
}

func (e *Env) PathFor(proto, file string) string {
	p := path.Join(e.OSName, file)
	if strings.HasSuffix(e.Name, "-install") {
		p = path.Join(e.OSName, "install", file)
	}
	if proto == "http" {
		return strings.TrimSuffix(e.provisionerURL, "/") + "/" + p
	}
	return p
}

func (e *Env) JoinInitrds(proto string) string {
	var out []string
	for _, i := range e.Initrds {
		out = append(out, e.PathFor(proto, i))
	}
	return strings.Join(out, " ")
}

// RenderData is what `.` is in every template.
type RenderData struct {
	Machine        *Machine
	Env            *Env
	ProvisionerURL string
	ApiURL         string
	token          string
	params         object
	defaults       object
	root           *template.Template
	bootParams     string
	// The path of the template being rendered: `.BootParams` depends on it.
	tmplPath string
}

func (r *RenderData) lookup(key string) (interface{}, bool) {
	if v, ok := r.params[key]; ok {
		return v, true
	}
	if v, ok := r.defaults[key]; ok {
		return v, true
	}
	return nil, false
}

// Param fails for a param that is neither set nor has a default, as DRP's does.
func (r *RenderData) Param(key string) (interface{}, error) {
	if v, ok := r.lookup(key); ok {
		return v, nil
	}
	return nil, fmt.Errorf("no such machine parameter %s", key)
}

func (r *RenderData) ParamExists(key string) bool {
	_, ok := r.lookup(key)
	return ok
}

func (r *RenderData) ParamAsJSON(key string) (string, error) {
	v, err := r.Param(key)
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(v)
	return string(b), err
}

// ParamExpand renders a string param's value as a template with this data.
func (r *RenderData) ParamExpand(key string) (string, error) {
	v, err := r.Param(key)
	if err != nil {
		return "", err
	}
	s, ok := v.(string)
	if !ok {
		return fmt.Sprint(v), nil
	}
	return r.renderText("param "+key, s)
}

func (r *RenderData) GenerateInfiniteToken() string { return r.token }

// BootParams renders the bootenv's BootParams; for a template whose path
// ends in ".ipxe" DRP prepends "initrd=<base name of the first initrd>"
// (backend/renderData.go BootParamsFor, hartsock/provision, July 2019).
func (r *RenderData) BootParams() (string, error) {
	s, err := r.renderText("BootParams", r.bootParams)
	if err != nil {
		return "", err
	}
	if strings.HasSuffix(r.tmplPath, ".ipxe") && len(r.Env.Initrds) > 0 {
		s = fmt.Sprintf("initrd=%s %s", path.Base(r.Env.Initrds[0]), s)
	}
	return s, nil
}

func (r *RenderData) renderText(name, text string) (string, error) {
	t, err := r.root.Clone()
	if err != nil {
		return "", err
	}
	t, err = t.New(name).Parse(text)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, r); err != nil {
		return "", err
	}
	return buf.String(), nil
}

func funcMap() template.FuncMap {
	return sprig.TxtFuncMap()
}

type context struct {
	Machine struct {
		UUID    string `json:"uuid"`
		Name    string `json:"name"`
		Address string `json:"address"`
		Mac     string `json:"mac"`
	} `json:"machine"`
	ProvisionerURL string `json:"provisioner_url"`
	ApiURL         string `json:"api_url"`
	Token          string `json:"token"`
	Params         object `json:"params"`
	// Params defined by other content on the endpoint (e.g. image-deploy's),
	// by name: {"Schema": {...}}. Their defaults apply and their schemas
	// check the machine's values, as the pack's own do.
	ParamDefs object `json:"param_defs"`
}

type rendered struct {
	Owner    string `json:"owner"`
	Name     string `json:"name"`
	Path     string `json:"path"`
	Contents string `json:"contents"`
}

func renderAll(bundle object, contextFile string) (interface{}, error) {
	data, err := os.ReadFile(contextFile)
	if err != nil {
		return nil, err
	}
	var ctx context
	if err := json.Unmarshal(data, &ctx); err != nil {
		return nil, fmt.Errorf("%s: %v", contextFile, err)
	}
	root := template.New("").Funcs(funcMap())
	for id, t := range section(bundle, "templates") {
		if _, err := root.New(id).Parse(asString(asObject(t)["Contents"])); err != nil {
			return nil, fmt.Errorf("template %s: %v", id, err)
		}
	}
	defaults := object{}
	schemas := object{}
	for _, defs := range []object{ctx.ParamDefs, section(bundle, "params")} {
		for name, p := range defs {
			schema := asObject(asObject(p)["Schema"])
			schemas[name] = schema
			if d, ok := schema["default"]; ok {
				defaults[name] = d
			}
		}
	}
	var names []string
	for name := range ctx.Params {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if schema, ok := schemas[name]; ok {
			if err := checkSchema(asObject(schema), ctx.Params[name]); err != "" {
				// What `drpcli machines set` gets back: the machine fails
				// validation (backend/param.go ValidateParams).
				return nil, fmt.Errorf("Key '%s': invalid val '%v': %s", name, ctx.Params[name], err)
			}
		}
	}
	env := asObject(section(bundle, "bootenvs")[bootenvName])
	arch := asObject(asObject(asObject(env["OS"])["SupportedArchitectures"])["amd64"])
	var initrds []string
	for _, i := range asList(arch["Initrds"]) {
		initrds = append(initrds, asString(i))
	}
	hex := ""
	if ip := net.ParseIP(ctx.Machine.Address).To4(); ip != nil {
		hex = fmt.Sprintf("%02X%02X%02X%02X", ip[0], ip[1], ip[2], ip[3])
	}
	r := &RenderData{
		Machine: &Machine{
			UUID: ctx.Machine.UUID, Name: ctx.Machine.Name,
			Path:    "machines/" + ctx.Machine.UUID,
			Address: ctx.Machine.Address, HexAddress: hex,
			ShortName: strings.SplitN(ctx.Machine.Name, ".", 2)[0],
			mac:       ctx.Machine.Mac,
		},
		Env: &Env{
			Name: asString(env["Name"]), OSName: asString(asObject(env["OS"])["Name"]),
			Kernel: asString(arch["Kernel"]), Initrds: initrds,
			provisionerURL: ctx.ProvisionerURL,
		},
		ProvisionerURL: ctx.ProvisionerURL,
		ApiURL:         ctx.ApiURL,
		token:          ctx.Token,
		params:         ctx.Params,
		defaults:       defaults,
		root:           root,
		bootParams:     asString(arch["BootParams"]),
	}
	bootParams, err := r.BootParams()
	if err != nil {
		return nil, fmt.Errorf("bootenv %s BootParams: %v", bootenvName, err)
	}
	var out []rendered
	renderList := func(owner string, list []interface{}) error {
		for _, e := range list {
			e := asObject(e)
			name := asString(e["Name"])
			p, err := r.renderText(owner+" "+name+" path", asString(e["Path"]))
			if err != nil {
				return fmt.Errorf("%s template %s path: %v", owner, name, err)
			}
			var contents string
			r.tmplPath = p
			if id, ok := e["ID"]; ok {
				var buf bytes.Buffer
				t, err := root.Clone()
				if err == nil {
					err = t.ExecuteTemplate(&buf, asString(id), r)
				}
				if err != nil {
					return fmt.Errorf("%s template %s: %v", owner, name, err)
				}
				contents = buf.String()
			} else {
				contents, err = r.renderText(owner+" "+name, asString(e["Contents"]))
				if err != nil {
					return fmt.Errorf("%s template %s: %v", owner, name, err)
				}
			}
			r.tmplPath = ""
			out = append(out, rendered{owner, name, p, contents})
		}
		return nil
	}
	if err := renderList("bootenvs/"+bootenvName, asList(env["Templates"])); err != nil {
		return nil, err
	}
	tasks := section(bundle, "tasks")
	var taskNames []string
	for name := range tasks {
		taskNames = append(taskNames, name)
	}
	sort.Strings(taskNames)
	for _, name := range taskNames {
		if err := renderList("tasks/"+name, asList(asObject(tasks[name])["Templates"])); err != nil {
			return nil, err
		}
	}
	return map[string]interface{}{"bootparams": bootParams, "templates": out}, nil
}

// checkSchema: the part of JSON Schema DRP's param schemas use here (type,
// enum), as gojsonschema words its errors. "" means valid.
func checkSchema(schema object, value interface{}) string {
	switch asString(schema["type"]) {
	case "string":
		if _, ok := value.(string); !ok {
			return "(root): Invalid type. Expected: string"
		}
	case "boolean":
		if _, ok := value.(bool); !ok {
			return "(root): Invalid type. Expected: boolean"
		}
	case "integer", "number":
		if _, ok := value.(float64); !ok {
			return "(root): Invalid type. Expected: " + asString(schema["type"])
		}
	case "object":
		if _, ok := value.(map[string]interface{}); !ok {
			return "(root): Invalid type. Expected: object"
		}
	case "array":
		if _, ok := value.([]interface{}); !ok {
			return "(root): Invalid type. Expected: array"
		}
	}
	if choices := asList(schema["enum"]); len(choices) > 0 {
		var quoted []string
		for _, c := range choices {
			if reflect.DeepEqual(c, value) {
				return ""
			}
			b, _ := json.Marshal(c)
			quoted = append(quoted, string(b))
		}
		return "(root): (root) must be one of the following: " + strings.Join(quoted, ", ")
	}
	return ""
}
