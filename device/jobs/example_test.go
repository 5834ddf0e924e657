package jobs

import (
	"os"
)

func ExampleCheckJobMain() {
	code := CheckJobMain([]string{"--handler-dir", "/var/lib/fleet-agent/jobs", "testdata/checkjob/install-and-cleanup.json"}, os.Stdout, os.Stdout, CheckJobOptions{})
	_ = code
	// Output:
	// runCommand steps: allowed, any executable (jobs.runCommand.allowedExecutables is empty) [agent defaults]
	//
	// testdata/checkjob/install-and-cleanup.json: valid
	// schema 1.0 (standard job document): 2 step(s) and a final step
	// statusDetails: last 1024 characters of stderr and stdout of each step
	// step 1/2 "Install-Packages"
	//     runHandler "install-packages.sh" from /var/lib/fleet-agent/jobs (the handler directory)
	//     runs as the agent's user: /var/lib/fleet-agent/jobs/install-packages.sh "root" wget   (first argument: runAsUser)
	//     requires: directory and handler mode 0700, owned by the agent's user, handler a regular file
	//     on failure: the job FAILS; later steps and the final step do not run
	// step 2/2 "print-greeting"
	//     runCommand as the agent's user, no shell: echo "Hello, World!"
	//     on failure: ignored (ignoreStepFailure "true"); the job continues
	// final step "Remove-Packages" (runs only if every step succeeded; ignored failures count as success)
	//     runHandler "remove-packages.sh" from /var/lib/fleet-agent/jobs (the handler directory)
	//     runs as the agent's user: /var/lib/fleet-agent/jobs/remove-packages.sh "root" wget   (first argument: runAsUser)
	//     requires: directory and handler mode 0700, owned by the agent's user, handler a regular file
	//     on failure: the job FAILS
	// result: SUCCEEDED when every step succeeds or its failure is ignored, else FAILED with the reason
}
