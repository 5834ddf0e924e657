package jobs

import (
	"os"
)

func ExampleCheckJobMain() {
	code := CheckJobMain([]string{"testdata/checkjob/install-and-cleanup.json"}, os.Stdout, os.Stdout, CheckJobOptions{})
	_ = code
	// Output:
	// runCommand steps: allowed, any executable (jobs.runCommand.allowedExecutables is empty) [agent defaults]
	// handlers not in the handler directory: run from the agent's PATH, any executable
	//
	// testdata/checkjob/install-and-cleanup.json: valid
	// schema 1.0 (standard job document): 2 step(s) and a final step
	// statusDetails: last 1024 characters of stderr and stdout of each step
	// step 1/2 "Install-Packages"
	//     runHandler "install-packages.sh" from <handler-dir> (the handler directory)
	//     runs as the agent's user: <handler-dir>/install-packages.sh "root" wget   (first argument: runAsUser)
	//     requires: directory and handler mode 0700, owned by the agent's user, handler a regular file
	//     on failure: the job FAILS; later steps and the final step do not run
	// step 2/2 "print-greeting"
	//     runCommand as the agent's user, no shell: echo "Hello, World!"
	//     on failure: ignored (ignoreStepFailure "true"); the job continues
	// final step "Remove-Packages" (runs only if every step succeeded; ignored failures count as success)
	//     runHandler "remove-packages.sh" from <handler-dir> (the handler directory) if it is there, else the executable "remove-packages.sh" from the agent's PATH (jobs.pathExecutables, subject to the runCommand rule)
	//     runs as the agent's user: <handler-dir>/remove-packages.sh "root" wget   (first argument: runAsUser)
	//     requires: directory and handler mode 0700, owned by the agent's user, handler a regular file
	//     on failure: the job FAILS
	// result: SUCCEEDED when every step succeeds or its failure is ignored, else FAILED with the reason
}
