package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// Fixed identity the mock AWS provider answers with.
const (
	mockAccount   = "123456789012"
	mockPartition = "aws"
)

// registration is one resource the program registered, as the engine saw
// it: type, name, inputs (secrets kept as secrets) and the options that
// travel in the RegisterResource request.
type registration struct {
	Type, Name     string
	Custom         bool
	Inputs         resource.PropertyMap
	Outputs        resource.PropertyMap
	Protect        bool
	RetainOnDelete bool
	// ImportID is the id the resource is imported with (pulumi.Import).
	ImportID string
	Parent   string
	// DependsOn are the explicit dependencies' "type::name".
	DependsOn []string
}

// invocation is one provider function call (data source).
type invocation struct {
	Token string
	Args  resource.PropertyMap
}

// fakeAWS is a pulumi.MockResourceMonitor that plays the AWS provider:
// it answers the data sources the program calls and gives every resource
// the computed outputs AWS would (ARNs, generated bucket names,
// certificate material), marking the provider's secret outputs secret as the
// engine does.
type fakeAWS struct {
	region string

	mu      sync.Mutex
	regs    []registration
	invokes []invocation
	// secrets are the Secrets Manager secrets that exist (by name → ARN),
	// for adopting a retained claim certificate.
	secrets map[string]string
}

func newFakeAWS(region string) *fakeAWS {
	return &fakeAWS{region: region, secrets: map[string]string{}}
}

func (f *fakeAWS) Call(args pulumi.MockCallArgs) (resource.PropertyMap, error) {
	f.mu.Lock()
	f.invokes = append(f.invokes, invocation{Token: args.Token, Args: args.Args})
	f.mu.Unlock()
	switch args.Token {
	case "aws:index/getPartition:getPartition":
		return resource.NewPropertyMapFromMap(map[string]any{
			"partition": mockPartition, "id": mockPartition, "dnsSuffix": "amazonaws.com", "reverseDnsPrefix": "com.amazonaws",
		}), nil
	case "aws:index/getRegion:getRegion":
		return resource.NewPropertyMapFromMap(map[string]any{
			"name": f.region, "id": f.region, "endpoint": "ec2." + f.region + ".amazonaws.com", "description": "mock region",
		}), nil
	case "aws:index/getCallerIdentity:getCallerIdentity":
		return resource.NewPropertyMapFromMap(map[string]any{
			"accountId": mockAccount, "id": mockAccount,
			"arn": "arn:aws:iam::" + mockAccount + ":user/deployer", "userId": "AIDAMOCK",
		}), nil
	case "aws:iot/getEndpoint:getEndpoint":
		typ := args.Args["endpointType"].StringValue()
		var addr string
		switch typ {
		case "iot:Data-ATS":
			addr = "a1b2c3d4e5f6g7-ats.iot." + f.region + ".amazonaws.com"
		case "iot:CredentialProvider":
			addr = "c1d2e3f4g5h6i7.credentials.iot." + f.region + ".amazonaws.com"
		default:
			return nil, fmt.Errorf("getEndpoint: unexpected endpointType %q", typ)
		}
		return resource.NewPropertyMapFromMap(map[string]any{"endpointAddress": addr, "endpointType": typ, "id": addr}), nil
	case "aws:secretsmanager/getSecret:getSecret":
		name := args.Args["name"].StringValue()
		f.mu.Lock()
		arn, ok := f.secrets[name]
		f.mu.Unlock()
		if !ok {
			return nil, fmt.Errorf("ResourceNotFoundException: Secrets Manager can't find the specified secret %q", name)
		}
		return resource.NewPropertyMapFromMap(map[string]any{"arn": arn, "name": name, "id": arn}), nil
	}
	return nil, fmt.Errorf("fake AWS: unexpected call %s", args.Token)
}

func (f *fakeAWS) arn(service, resource string) string {
	return fmt.Sprintf("arn:%s:%s:%s:%s:%s", mockPartition, service, f.region, mockAccount, resource)
}

// namedResource is how AWS names a resource type: its id is the input
// idKey and its ARN arn:aws:<service>:<region>:<account>:<prefix><id>.
type namedResource struct{ idKey, service, prefix string }

func namedARN(typ string) (namedResource, bool) {
	n, ok := map[string]namedResource{
		"aws:dynamodb/table:Table":                          {"name", "dynamodb", "table/"},
		"aws:cloudwatch/logGroup:LogGroup":                  {"name", "logs", "log-group:"},
		"aws:lambda/function:Function":                      {"name", "lambda", "function:"},
		"aws:cloudwatch/eventRule:EventRule":                {"name", "events", "rule/"},
		"aws:iot/policy:Policy":                             {"name", "iot", "policy/"},
		"aws:iot/thingGroup:ThingGroup":                     {"name", "iot", "thinggroup/"},
		"aws:iot/roleAlias:RoleAlias":                       {"alias", "iot", "rolealias/"},
		"aws:iot/provisioningTemplate:ProvisioningTemplate": {"name", "iot", "provisioningtemplate/"},
	}[typ]
	return n, ok
}

func (f *fakeAWS) NewResource(args pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	in := args.Inputs
	out := in.Copy()
	id := args.Name + "-id"
	str := func(key string) string {
		v, ok := in[resource.PropertyKey(key)]
		if !ok {
			return ""
		}
		if v.IsSecret() {
			v = v.SecretValue().Element
		}
		if !v.IsString() {
			return ""
		}
		return v.StringValue()
	}
	set := func(key, value string) { out[resource.PropertyKey(key)] = resource.NewStringProperty(value) }

	switch args.TypeToken {
	case "aws:s3/bucketV2:BucketV2":
		sum := sha256.Sum256([]byte(args.Name))
		bucket := str("bucketPrefix") + hex.EncodeToString(sum[:6])
		id = bucket
		set("bucket", bucket)
		set("arn", "arn:aws:s3:::"+bucket)
	case "aws:iot/certificate:Certificate":
		sum := sha256.Sum256([]byte("claim:" + args.Name))
		id = hex.EncodeToString(sum[:])
		set("arn", f.arn("iot", "cert/"+id))
		set("certificatePem", "-----BEGIN CERTIFICATE-----\nMOCK\n-----END CERTIFICATE-----\n")
		set("privateKey", "-----BEGIN RSA PRIVATE KEY-----\nMOCK-KEY\n-----END RSA PRIVATE KEY-----\n")
		set("publicKey", "-----BEGIN PUBLIC KEY-----\nMOCK\n-----END PUBLIC KEY-----\n")
	case "aws:secretsmanager/secret:Secret":
		id = f.arn("secretsmanager", "secret:"+str("name")+"-AbCdEf")
		set("arn", id)
	case "aws:iam/role:Role":
		id = str("name")
		set("arn", fmt.Sprintf("arn:%s:iam::%s:role/%s", mockPartition, mockAccount, id))
	default:
		// Resources named by an input, with a regional ARN of that name.
		if named, ok := namedARN(args.TypeToken); ok {
			id = str(named.idKey)
			set("arn", f.arn(named.service, named.prefix+id))
		}
		if args.TypeToken == "aws:lambda/function:Function" {
			set("invokeArn", "arn:aws:apigateway:"+f.region+":lambda:path/2015-03-31/functions/"+f.arn("lambda", "function:"+id)+"/invocations")
		}
	}

	reg := registration{Type: args.TypeToken, Name: args.Name, Custom: args.Custom, Inputs: in, Outputs: out}
	if rpc := args.RegisterRPC; rpc != nil {
		reg.Protect = rpc.GetProtect()
		reg.RetainOnDelete = rpc.GetRetainOnDelete()
		reg.ImportID = rpc.GetImportId()
		reg.Parent = rpc.GetParent()
		for _, dep := range rpc.GetDependencies() {
			u := resource.URN(dep)
			reg.DependsOn = append(reg.DependsOn, string(u.Type())+"::"+u.Name())
		}
		// The engine marks a provider's additional secret outputs secret;
		// do the same so the program's secrecy is tested, not assumed.
		for _, k := range rpc.GetAdditionalSecretOutputs() {
			if v, ok := out[resource.PropertyKey(k)]; ok && !v.IsSecret() {
				out[resource.PropertyKey(k)] = resource.MakeSecret(v)
			}
		}
	}
	f.mu.Lock()
	f.regs = append(f.regs, reg)
	f.mu.Unlock()
	return id, out, nil
}

// resources returns the registrations of type typ (all when empty).
func (f *fakeAWS) resources(typ string) []registration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []registration
	for _, r := range f.regs {
		if typ == "" || r.Type == typ {
			out = append(out, r)
		}
	}
	return out
}

// one returns the single registration of type typ whose name ends with
// suffix.
func (f *fakeAWS) one(typ, suffix string) (registration, error) {
	var found []registration
	for _, r := range f.resources(typ) {
		if strings.HasSuffix(r.Name, suffix) {
			found = append(found, r)
		}
	}
	if len(found) != 1 {
		return registration{}, fmt.Errorf("want exactly one %s named *%s, found %d", typ, suffix, len(found))
	}
	return found[0], nil
}

func (f *fakeAWS) calls(token string) []invocation {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []invocation
	for _, c := range f.invokes {
		if c.Token == token {
			out = append(out, c)
		}
	}
	return out
}

// prop reads a nested property by path ("preProvisioningHook",
// "targetArn"), unwrapping secrets. ok is false if any step is missing.
func prop(m resource.PropertyMap, path ...string) (resource.PropertyValue, bool) {
	var v resource.PropertyValue
	cur := m
	for i, p := range path {
		var ok bool
		v, ok = cur[resource.PropertyKey(p)]
		if !ok {
			return resource.PropertyValue{}, false
		}
		if v.IsSecret() {
			v = v.SecretValue().Element
		}
		if i < len(path)-1 {
			if !v.IsObject() {
				return resource.PropertyValue{}, false
			}
			cur = v.ObjectValue()
		}
	}
	return v, true
}

// propString is prop for a string value ("" when missing).
func propString(m resource.PropertyMap, path ...string) string {
	v, ok := prop(m, path...)
	if !ok || !v.IsString() {
		return ""
	}
	return v.StringValue()
}
