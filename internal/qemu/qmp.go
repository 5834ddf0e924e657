package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// QMP runs one QEMU Machine Protocol command without arguments (e.g.
// system_powerdown, system_reset, quit) on the running machine.
func (m *Machine) QMP(ctx context.Context, command string) error {
	var d net.Dialer
	var conn net.Conn
	var err error
	// The socket appears shortly after QEMU starts.
	for range 50 {
		conn, err = d.DialContext(ctx, "unix", m.qmpPath)
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("qemu: QMP %s: %w", command, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	} else {
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	}
	r := bufio.NewReader(conn)
	// Greeting, then capabilities negotiation, then the command.
	if _, err := readQMP(r); err != nil {
		return fmt.Errorf("qemu: QMP greeting: %w", err)
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		b, _ := json.Marshal(map[string]string{"execute": cmd})
		if _, err := conn.Write(append(b, '\n')); err != nil {
			return fmt.Errorf("qemu: QMP %s: %w", cmd, err)
		}
		if err := qmpResult(r); err != nil {
			return fmt.Errorf("qemu: QMP %s: %w", cmd, err)
		}
	}
	return nil
}

type qmpMessage struct {
	Return *json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

func readQMP(r *bufio.Reader) (qmpMessage, error) {
	line, err := r.ReadBytes('\n')
	if err != nil {
		return qmpMessage{}, err
	}
	var msg qmpMessage
	if err := json.Unmarshal(line, &msg); err != nil {
		return qmpMessage{}, fmt.Errorf("bad QMP message %q: %w", line, err)
	}
	return msg, nil
}

// qmpResult reads until the command's answer, skipping events.
func qmpResult(r *bufio.Reader) error {
	for {
		msg, err := readQMP(r)
		if err != nil {
			return err
		}
		switch {
		case msg.Error != nil:
			return fmt.Errorf("%s: %s", msg.Error.Class, msg.Error.Desc)
		case msg.Return != nil:
			return nil
		}
	}
}
