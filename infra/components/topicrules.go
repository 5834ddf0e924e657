package components

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/cloudwatch"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iam"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iot"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// LogRule routes the messages an IoT SQL statement selects into a
// CloudWatch log group of its own.
type LogRule struct {
	// Name is a short identifier (lower-case letters, digits, '-'); the
	// IoT rule is named <prefix>_<name> with '-' as '_', the log group
	// /aws/iot/<prefix>/<name>.
	Name        string
	Description string
	// SQL is the rule's IoT SQL statement (version 2016-03-23).
	SQL string
}

// TopicRulesArgs configure TopicRules.
type TopicRulesArgs struct {
	// Prefix is "iot-fleet-<env>".
	Prefix    string
	AccountID string
	// SourceArn, when set, is the aws:SourceArn the rules' role requires
	// (IoTSourceArn: AWS IoT of this account and region).
	SourceArn        string
	Rules            []LogRule
	LogRetentionDays int
	Tags             pulumi.StringMap
}

// TopicRules are IoT topic rules that log device messages to CloudWatch
// Logs, each with an error action writing failed deliveries to a shared
// error log group, and the IAM role IoT uses for both (allowed to write
// only to those log groups).
type TopicRules struct {
	pulumi.ResourceState

	Role          *iam.Role
	RolePolicy    pulumi.StringOutput
	ErrorLogGroup *cloudwatch.LogGroup
	Rules         map[string]*iot.TopicRule
	LogGroups     map[string]*cloudwatch.LogGroup
}

// IoT SQL version used by every rule.
const topicRuleSQLVersion = "2016-03-23"

var ruleNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,63}$`)

// TopicRuleName is the IoT rule name of r (rule names allow only letters,
// digits and underscores).
func TopicRuleName(prefix string, r LogRule) string {
	return strings.ReplaceAll(prefix+"_"+r.Name, "-", "_")
}

// NewTopicRules declares TopicRules.
func NewTopicRules(ctx *pulumi.Context, name string, args TopicRulesArgs, opts ...pulumi.ResourceOption) (*TopicRules, error) {
	seen := map[string]bool{}
	for _, r := range args.Rules {
		if !ruleNameRE.MatchString(r.Name) || seen[r.Name] || r.SQL == "" {
			return nil, fmt.Errorf("topic rules %s: rule %q: names must be unique lower-case identifiers and SQL set", name, r.Name)
		}
		seen[r.Name] = true
	}
	c := &TopicRules{Rules: map[string]*iot.TopicRule{}, LogGroups: map[string]*cloudwatch.LogGroup{}}
	if err := ctx.RegisterComponentResource("iot-fleet:rules:TopicRules", name, c, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(c)
	var err error
	if c.ErrorLogGroup, err = cloudwatch.NewLogGroup(ctx, name+"-errors", &cloudwatch.LogGroupArgs{
		Name:            pulumi.String("/aws/iot/" + args.Prefix + "/rule-errors"),
		RetentionInDays: pulumi.Int(args.LogRetentionDays),
		Tags:            args.Tags,
	}, parent); err != nil {
		return nil, fmt.Errorf("rule error log group: %w", err)
	}
	streams := pulumi.StringArray{logStreamsARN(c.ErrorLogGroup)}
	for _, r := range args.Rules {
		lg, err := cloudwatch.NewLogGroup(ctx, name+"-"+r.Name, &cloudwatch.LogGroupArgs{
			Name:            pulumi.String("/aws/iot/" + args.Prefix + "/" + r.Name),
			RetentionInDays: pulumi.Int(args.LogRetentionDays),
			Tags:            args.Tags,
		}, parent)
		if err != nil {
			return nil, fmt.Errorf("rule %s log group: %w", r.Name, err)
		}
		c.LogGroups[r.Name] = lg
		streams = append(streams, logStreamsARN(lg))
	}
	role, err := newServiceRole(ctx, name, "topic rules", serviceRoleArgs{
		Name:          args.Prefix + "-topic-rules",
		Description:   "Assumed by AWS IoT rules of " + args.Prefix + " to write device messages and rule errors to CloudWatch Logs",
		Service:       "iot.amazonaws.com",
		SourceAccount: args.AccountID,
		SourceArn:     args.SourceArn,
		Statements: []Statement{{
			Sid:       "WriteRuleLogs",
			Actions:   []string{"logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"},
			Resources: streams,
		}},
		Tags: args.Tags,
	}, parent)
	if err != nil {
		return nil, err
	}
	c.Role, c.RolePolicy = role.Role, role.Document
	pol := role.Policy
	for _, r := range args.Rules {
		lg := c.LogGroups[r.Name]
		rule, err := iot.NewTopicRule(ctx, name+"-"+r.Name, &iot.TopicRuleArgs{
			Name:        pulumi.String(TopicRuleName(args.Prefix, r)),
			Description: pulumi.String(r.Description),
			Enabled:     pulumi.Bool(true),
			Sql:         pulumi.String(r.SQL),
			SqlVersion:  pulumi.String(topicRuleSQLVersion),
			CloudwatchLogs: iot.TopicRuleCloudwatchLogArray{
				&iot.TopicRuleCloudwatchLogArgs{LogGroupName: lg.Name, RoleArn: c.Role.Arn},
			},
			ErrorAction: &iot.TopicRuleErrorActionArgs{
				CloudwatchLogs: &iot.TopicRuleErrorActionCloudwatchLogsArgs{LogGroupName: c.ErrorLogGroup.Name, RoleArn: c.Role.Arn},
			},
			Tags: args.Tags,
		}, parent, pulumi.DependsOn([]pulumi.Resource{pol}))
		if err != nil {
			return nil, fmt.Errorf("topic rule %s: %w", r.Name, err)
		}
		c.Rules[r.Name] = rule
	}
	if err := ctx.RegisterResourceOutputs(c, pulumi.Map{"errorLogGroup": c.ErrorLogGroup.Name}); err != nil {
		return nil, err
	}
	return c, nil
}

func logStreamsARN(lg *cloudwatch.LogGroup) pulumi.StringOutput {
	return lg.Arn.ApplyT(func(arn string) string { return arn + ":*" }).(pulumi.StringOutput)
}
