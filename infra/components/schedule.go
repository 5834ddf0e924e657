package components

import (
	"fmt"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iam"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/scheduler"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// invokeScheduleArgs configure newInvokeSchedule.
type invokeScheduleArgs struct {
	// Prefix is "iot-fleet-<env>"; the schedule is named
	// "<prefix>-<Name>", its role "<prefix>-<Name>-schedule".
	Prefix    string
	Name      string
	AccountID string
	// Description of the schedule, RoleDescription of its role.
	Description     string
	RoleDescription string
	// Expression is the schedule expression, e.g. "rate(1 day)".
	Expression string
	// Target is the Lambda the schedule invokes (with input {}), the only
	// thing its role may do; Sid names that permission.
	Target *Function
	Sid    string
	Tags   pulumi.StringMap
}

// InvokeSchedule is an EventBridge Scheduler schedule that invokes one
// Lambda, with a role only EventBridge Scheduler of this account can
// assume and that may invoke only that Lambda. Rotation (the daily
// expiry scan) and SSM (the hourly activation sweep) embed one.
type InvokeSchedule struct {
	Schedule      *scheduler.Schedule
	SchedulerRole *iam.Role
	// SchedulerPolicy is the schedule role's inline policy document.
	SchedulerPolicy pulumi.StringOutput
}

// newInvokeSchedule declares an InvokeSchedule: the role and its policy
// named roleRes, the schedule scheduleRes, parented by opts (a helper, not
// a component: the resources keep their URNs under the component that
// declares them). label prefixes errors.
func newInvokeSchedule(ctx *pulumi.Context, roleRes, scheduleRes, label string, args invokeScheduleArgs, opts ...pulumi.ResourceOption) (InvokeSchedule, error) {
	role, err := newServiceRole(ctx, roleRes, label, serviceRoleArgs{
		Name:          args.Prefix + "-" + args.Name + "-schedule",
		Description:   args.RoleDescription,
		Service:       "scheduler.amazonaws.com",
		SourceAccount: args.AccountID,
		Statements: []Statement{{
			Sid: args.Sid, Actions: []string{"lambda:InvokeFunction"}, Resources: pulumi.StringArray{args.Target.Arn},
		}},
		Tags: args.Tags,
	}, opts...)
	if err != nil {
		return InvokeSchedule{}, err
	}
	sched, err := scheduler.NewSchedule(ctx, scheduleRes, &scheduler.ScheduleArgs{
		Name:               pulumi.String(args.Prefix + "-" + args.Name),
		Description:        pulumi.String(args.Description),
		ScheduleExpression: pulumi.String(args.Expression),
		FlexibleTimeWindow: &scheduler.ScheduleFlexibleTimeWindowArgs{Mode: pulumi.String("OFF")},
		Target: &scheduler.ScheduleTargetArgs{
			Arn:         args.Target.Arn,
			RoleArn:     role.Role.Arn,
			Input:       pulumi.String("{}"),
			RetryPolicy: &scheduler.ScheduleTargetRetryPolicyArgs{MaximumRetryAttempts: pulumi.Int(2)},
		},
	}, append(append([]pulumi.ResourceOption{}, opts...), pulumi.DependsOn([]pulumi.Resource{role.Policy}))...)
	if err != nil {
		return InvokeSchedule{}, fmt.Errorf("%s: %w", label, err)
	}
	return InvokeSchedule{Schedule: sched, SchedulerRole: role.Role, SchedulerPolicy: role.Document}, nil
}
