package components

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/lambda"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/s3"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// User metadata of the allowlist object the sync Lambda reads (S3 sends
// them as x-amz-meta-<key>).
const (
	// MetaConfirmRevocations lifts the sync's revocation limit for this
	// object only, when it equals the number of revocations the plan makes.
	MetaConfirmRevocations = "confirm-revocations"
	// MetaDeployedBy is who deployed the object (recorded as who
	// re-admitted a serial).
	MetaDeployedBy = "deployed-by"
)

// AllowlistKey is the config bucket key of the allowlist object; the sync
// Lambda is triggered by ObjectCreated events for exactly this key.
const AllowlistKey = "allowlist.txt"

// AllowlistArgs configure Allowlist.
type AllowlistArgs struct {
	// Path is the local allowlist file uploaded on every deploy that
	// changes it. The program validates it before declaring anything.
	Path string
	// Bucket is the config bucket.
	Bucket *PrivateBucket
	// Sync is the allowlist sync Lambda.
	Sync      *Function
	AccountID string
	// ConfirmRevocations, when > 0, is set as MetaConfirmRevocations.
	ConfirmRevocations int
	// DeployedBy, when set, is set as MetaDeployedBy.
	DeployedBy string
}

// Allowlist is the allowlist object in the config bucket and the
// ObjectCreated notification that runs the sync Lambda. However many serials
// the file holds, it is one object: the number of resources does not depend
// on the fleet's size.
type Allowlist struct {
	pulumi.ResourceState

	Object *s3.BucketObjectv2
	// SHA256 is the hex SHA-256 of the uploaded file (the object's
	// source hash).
	SHA256 string
	Key    string
}

// NewAllowlist declares Allowlist.
func NewAllowlist(ctx *pulumi.Context, name string, args AllowlistArgs, opts ...pulumi.ResourceOption) (*Allowlist, error) {
	if args.Bucket == nil || args.Sync == nil || args.Path == "" {
		return nil, fmt.Errorf("allowlist %s: Path, Bucket and Sync are required", name)
	}
	if args.ConfirmRevocations < 0 {
		return nil, fmt.Errorf("allowlist %s: ConfirmRevocations %d is negative", name, args.ConfirmRevocations)
	}
	content, err := os.ReadFile(args.Path)
	if err != nil {
		return nil, fmt.Errorf("allowlist: %w", err)
	}
	sum := sha256.Sum256(content)
	c := &Allowlist{SHA256: hex.EncodeToString(sum[:]), Key: AllowlistKey}
	if err := ctx.RegisterComponentResource("iot-fleet:allowlist:Allowlist", name, c, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(c)
	invoke, err := lambda.NewPermission(ctx, name+"-s3-invoke", &lambda.PermissionArgs{
		Action:        pulumi.String("lambda:InvokeFunction"),
		Function:      args.Sync.Name,
		Principal:     pulumi.String("s3.amazonaws.com"),
		SourceArn:     args.Bucket.Arn,
		SourceAccount: pulumi.String(args.AccountID),
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("allowlist sync invoke permission: %w", err)
	}
	// A bucket has a single notification configuration: later triggers on
	// the config bucket must be added to this resource.
	notify, err := s3.NewBucketNotification(ctx, name+"-notify", &s3.BucketNotificationArgs{
		Bucket: args.Bucket.Bucket.ID(),
		LambdaFunctions: s3.BucketNotificationLambdaFunctionArray{
			&s3.BucketNotificationLambdaFunctionArgs{
				Id:                pulumi.String("allowlist-sync"),
				LambdaFunctionArn: args.Sync.Arn,
				Events:            pulumi.StringArray{pulumi.String("s3:ObjectCreated:*")},
				FilterPrefix:      pulumi.String(AllowlistKey),
				FilterSuffix:      pulumi.String(AllowlistKey),
			},
		},
	}, parent, pulumi.DependsOn([]pulumi.Resource{invoke}))
	if err != nil {
		return nil, fmt.Errorf("allowlist notification: %w", err)
	}
	// The object depends on the notification so that the very first upload
	// already triggers the sync. A change of metadata re-uploads it (and
	// so runs the sync again, e.g. with a confirmation).
	metadata := pulumi.StringMap{}
	if args.ConfirmRevocations > 0 {
		metadata[MetaConfirmRevocations] = pulumi.String(strconv.Itoa(args.ConfirmRevocations))
	}
	if args.DeployedBy != "" {
		metadata[MetaDeployedBy] = pulumi.String(args.DeployedBy)
	}
	objectArgs := &s3.BucketObjectv2Args{
		Bucket:      args.Bucket.Bucket.ID(),
		Key:         pulumi.String(AllowlistKey),
		Source:      pulumi.NewFileAsset(args.Path),
		SourceHash:  pulumi.String(c.SHA256),
		ContentType: pulumi.String("text/plain; charset=utf-8"),
	}
	if len(metadata) > 0 {
		objectArgs.Metadata = metadata
	}
	if c.Object, err = s3.NewBucketObjectv2(ctx, name, objectArgs, parent, pulumi.DependsOn([]pulumi.Resource{notify})); err != nil {
		return nil, fmt.Errorf("allowlist object: %w", err)
	}
	if err := ctx.RegisterResourceOutputs(c, pulumi.Map{"key": pulumi.String(c.Key), "sha256": pulumi.String(c.SHA256)}); err != nil {
		return nil, err
	}
	return c, nil
}
