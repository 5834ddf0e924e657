package components

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// assertInvokeSchedule checks a schedule newInvokeSchedule declared as
// scheduleRes (its role and role policy roleRes): it invokes the Lambda
// target with {} at expr, as that role, which only EventBridge Scheduler
// assumes and which may only invoke target.
func assertInvokeSchedule(t *testing.T, rec *recorder, scheduleRes, roleRes, expr, target string) {
	t.Helper()
	sched := rec.find(t, "aws:scheduler/schedule:Schedule", scheduleRes)
	assert.Equal(t, expr, str(sched, "scheduleExpression"))
	assert.Equal(t, "OFF", str(sched, "flexibleTimeWindow", "mode"))
	assert.Equal(t, "arn:aws:mock:::"+target, str(sched, "target", "arn"))
	assert.Equal(t, "{}", str(sched, "target", "input"))
	assert.Equal(t, "arn:aws:mock:::"+roleRes, str(sched, "target", "roleArn"))
	role := rec.find(t, "aws:iam/role:Role", roleRes)
	assert.Contains(t, str(role, "assumeRolePolicy"), "scheduler.amazonaws.com")
	assert.Equal(t, map[string][]string{"lambda:InvokeFunction": {"arn:aws:mock:::" + target}},
		grants(t, str(rec.find(t, "aws:iam/rolePolicy:RolePolicy", roleRes), "policy")))
}
