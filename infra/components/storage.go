package components

import (
	"fmt"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/dynamodb"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/s3"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/iot-fleet/iot-fleet/internal/registry"
)

// PrivateBucketArgs configure a PrivateBucket.
type PrivateBucketArgs struct {
	// NamePrefix is the bucket name prefix; AWS adds a unique suffix.
	NamePrefix string
	// Retain keeps the bucket, with its public access block, ownership,
	// versioning, encryption and TLS-only policy, in AWS when the stack
	// is destroyed (a versioned bucket that ever held an object cannot be
	// deleted without emptying every version first).
	Retain bool
	Tags   pulumi.StringMap
}

// RetainedOnDestroy is the resource option of what a destroy leaves in
// AWS because a live fleet holds it or it holds data (docs/delivery.md
// lists them and how to clean them up).
func RetainedOnDestroy(retain bool) pulumi.ResourceOption { return pulumi.RetainOnDelete(retain) }

// AdoptRetained is the resource option that imports a resource an earlier
// destroy retained (id: its name) instead of creating it, when adopt is
// set (stack config adoptRetained); otherwise it does nothing.
func AdoptRetained(adopt bool, id string) pulumi.ResourceOption {
	if !adopt {
		return pulumi.Composite()
	}
	return pulumi.Import(pulumi.ID(id))
}

// PrivateBucket is an S3 bucket that is private (public access blocked,
// ACLs disabled), versioned, encrypted at rest (SSE-S3) and reachable over
// TLS only.
type PrivateBucket struct {
	pulumi.ResourceState

	Bucket *s3.BucketV2
	// Name and Arn of the bucket.
	Name pulumi.StringOutput
	Arn  pulumi.StringOutput
}

// NewPrivateBucket declares a PrivateBucket.
func NewPrivateBucket(ctx *pulumi.Context, name string, args PrivateBucketArgs, opts ...pulumi.ResourceOption) (*PrivateBucket, error) {
	c := &PrivateBucket{}
	if err := ctx.RegisterComponentResource("iot-fleet:storage:PrivateBucket", name, c, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Composite(pulumi.Parent(c), RetainedOnDestroy(args.Retain))
	bucket, err := s3.NewBucketV2(ctx, name, &s3.BucketV2Args{
		BucketPrefix: pulumi.String(args.NamePrefix),
		ForceDestroy: pulumi.Bool(false),
		Tags:         args.Tags,
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", name, err)
	}
	pab, err := s3.NewBucketPublicAccessBlock(ctx, name, &s3.BucketPublicAccessBlockArgs{
		Bucket:                bucket.ID(),
		BlockPublicAcls:       pulumi.Bool(true),
		BlockPublicPolicy:     pulumi.Bool(true),
		IgnorePublicAcls:      pulumi.Bool(true),
		RestrictPublicBuckets: pulumi.Bool(true),
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("bucket %s public access block: %w", name, err)
	}
	if _, err := s3.NewBucketOwnershipControls(ctx, name, &s3.BucketOwnershipControlsArgs{
		Bucket: bucket.ID(),
		Rule:   &s3.BucketOwnershipControlsRuleArgs{ObjectOwnership: pulumi.String("BucketOwnerEnforced")},
	}, parent); err != nil {
		return nil, fmt.Errorf("bucket %s ownership: %w", name, err)
	}
	if _, err := s3.NewBucketVersioningV2(ctx, name, &s3.BucketVersioningV2Args{
		Bucket:                  bucket.ID(),
		VersioningConfiguration: &s3.BucketVersioningV2VersioningConfigurationArgs{Status: pulumi.String("Enabled")},
	}, parent); err != nil {
		return nil, fmt.Errorf("bucket %s versioning: %w", name, err)
	}
	if _, err := s3.NewBucketServerSideEncryptionConfigurationV2(ctx, name, &s3.BucketServerSideEncryptionConfigurationV2Args{
		Bucket: bucket.ID(),
		Rules: s3.BucketServerSideEncryptionConfigurationV2RuleArray{
			&s3.BucketServerSideEncryptionConfigurationV2RuleArgs{
				ApplyServerSideEncryptionByDefault: &s3.BucketServerSideEncryptionConfigurationV2RuleApplyServerSideEncryptionByDefaultArgs{
					SseAlgorithm: pulumi.String("AES256"),
				},
			},
		},
	}, parent); err != nil {
		return nil, fmt.Errorf("bucket %s encryption: %w", name, err)
	}
	objects := bucket.Arn.ApplyT(func(arn string) string { return arn + "/*" }).(pulumi.StringOutput)
	if _, err := s3.NewBucketPolicy(ctx, name, &s3.BucketPolicyArgs{
		Bucket: bucket.ID(),
		Policy: PolicyDocument(Statement{
			Sid:       "DenyInsecureTransport",
			Effect:    "Deny",
			Principal: "*",
			Actions:   []string{"s3:*"},
			Resources: pulumi.StringArray{bucket.Arn, objects},
			Condition: map[string]map[string]any{"Bool": {"aws:SecureTransport": "false"}},
		}),
	}, parent, pulumi.DependsOn([]pulumi.Resource{pab})); err != nil {
		return nil, fmt.Errorf("bucket %s policy: %w", name, err)
	}
	c.Bucket, c.Name, c.Arn = bucket, bucket.Bucket, bucket.Arn
	if err := ctx.RegisterResourceOutputs(c, pulumi.Map{"name": c.Name, "arn": c.Arn}); err != nil {
		return nil, err
	}
	return c, nil
}

// StorageArgs configure Storage.
type StorageArgs struct {
	// Prefix is "iot-fleet-<env>".
	Prefix string
	// DeletionProtection protects the registry table from deletion; a
	// protected table is also retained by a destroy (which would
	// otherwise fail on it).
	DeletionProtection bool
	// AdoptRetained imports a registry table retained by an earlier
	// destroy (only a deletion-protected one is retained).
	AdoptRetained bool
	Tags          pulumi.StringMap
}

// Storage is the stack's state: the OTA artifacts bucket, the config
// bucket (allowlist.txt), the images bucket and the device registry table.
type Storage struct {
	pulumi.ResourceState

	Artifacts *PrivateBucket
	Config    *PrivateBucket
	// Images holds the built OS images (.github/workflows/build-image.yml
	// uploads them under images/<env>/). An image contains the claim
	// private key, so no role of the stack may read this bucket: devices
	// read the artifacts bucket through the token-exchange role.
	Images   *PrivateBucket
	Registry *dynamodb.Table
	// RegistryName and RegistryArn of the device registry table.
	RegistryName pulumi.StringOutput
	RegistryArn  pulumi.StringOutput
}

// BucketPrefix is the name prefix of the stack's bucket kind
// ("artifacts", "config", "images"): "iot-fleet-<env>-<kind>-", to which AWS
// adds a unique suffix. IAM documents outside the stack
// (deploy/aws/image-build-role-policy.json) match these names.
func BucketPrefix(prefix, kind string) string { return prefix + "-" + kind + "-" }

// RegistryHashKey is the registry table's partition key.
const RegistryHashKey = "serial"

// NewStorage declares Storage.
func NewStorage(ctx *pulumi.Context, name string, args StorageArgs, opts ...pulumi.ResourceOption) (*Storage, error) {
	c := &Storage{}
	if err := ctx.RegisterComponentResource("iot-fleet:storage:Storage", name, c, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(c)
	var err error
	bucket := func(kind string) (*PrivateBucket, error) {
		return NewPrivateBucket(ctx, name+"-"+kind, PrivateBucketArgs{NamePrefix: BucketPrefix(args.Prefix, kind), Retain: true, Tags: args.Tags}, parent)
	}
	if c.Artifacts, err = bucket("artifacts"); err != nil {
		return nil, err
	}
	if c.Config, err = bucket("config"); err != nil {
		return nil, err
	}
	if c.Images, err = bucket("images"); err != nil {
		return nil, err
	}
	c.Registry, err = dynamodb.NewTable(ctx, name+"-registry", &dynamodb.TableArgs{
		Name:        pulumi.String(args.Prefix + "-registry"),
		BillingMode: pulumi.String("PAY_PER_REQUEST"),
		HashKey:     pulumi.String(RegistryHashKey),
		Attributes: dynamodb.TableAttributeArray{
			&dynamodb.TableAttributeArgs{Name: pulumi.String(RegistryHashKey), Type: pulumi.String("S")},
			// Keys of the certificate-expiry index (certificate rotation).
			&dynamodb.TableAttributeArgs{Name: pulumi.String(registry.AttrExpiryPartition), Type: pulumi.String("S")},
			&dynamodb.TableAttributeArgs{Name: pulumi.String(registry.AttrCertNotAfter), Type: pulumi.String("S")},
		},
		GlobalSecondaryIndexes: dynamodb.TableGlobalSecondaryIndexArray{&dynamodb.TableGlobalSecondaryIndexArgs{
			Name:           pulumi.String(registry.ExpiryIndex),
			HashKey:        pulumi.String(registry.AttrExpiryPartition),
			RangeKey:       pulumi.String(registry.AttrCertNotAfter),
			ProjectionType: pulumi.String("ALL"),
		}},
		PointInTimeRecovery:       &dynamodb.TablePointInTimeRecoveryArgs{Enabled: pulumi.Bool(true)},
		ServerSideEncryption:      &dynamodb.TableServerSideEncryptionArgs{Enabled: pulumi.Bool(true)},
		DeletionProtectionEnabled: pulumi.Bool(args.DeletionProtection),
		Tags:                      args.Tags,
	}, parent, RetainedOnDestroy(args.DeletionProtection), AdoptRetained(args.AdoptRetained && args.DeletionProtection, args.Prefix+"-registry"))
	if err != nil {
		return nil, fmt.Errorf("registry table: %w", err)
	}
	c.RegistryName, c.RegistryArn = c.Registry.Name, c.Registry.Arn
	if err := ctx.RegisterResourceOutputs(c, pulumi.Map{
		"artifactsBucket": c.Artifacts.Name,
		"configBucket":    c.Config.Name,
		"imagesBucket":    c.Images.Name,
		"registryTable":   c.RegistryName,
	}); err != nil {
		return nil, err
	}
	return c, nil
}
