package provision

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"

	"github.com/iot-fleet/iot-fleet/device/mqttconn"
	"github.com/iot-fleet/iot-fleet/device/store"
)

// Recovering reports whether a recovery (Recover) was started and has not
// finished: the agent then resumes it before connecting.
func Recovering(st *store.Store) (bool, error) {
	var s State
	found, err := st.ReadJSON(store.ProvisionFile, &s)
	if err != nil {
		return false, fmt.Errorf("provision: %w", err)
	}
	return found && s.Recovery, nil
}

// Recover gives the device a working identity again after the broker
// refused its certificate. Each attempt (spaced by the persisted backoff)
// first connects with the current certificate: if the broker accepts it
// again, the recovery is abandoned (its new key and certificate removed)
// and the current identity returned. Only when the broker refuses it is
// the claim certificate used, to provision a new key made on the device
// (new files beside the old ones); once a connection with the new
// certificate succeeds, identity.json is switched to it and the old key and
// certificate are removed. replaced reports whether the identity changed.
//
// A power cut at any point leaves identity.json naming a key and
// certificate that are on disk (the old ones until the switch), and
// provision.json from which Recover resumes.
func (p *Provisioner) Recover(ctx context.Context) (id store.Identity, replaced bool, err error) {
	cur, found, err := p.o.Store.Identity()
	if err != nil {
		return store.Identity{}, false, fmt.Errorf("provision: %w", err)
	}
	if !found {
		id, err := p.Run(ctx)
		return id, err == nil, err
	}
	st, err := p.loadState()
	if err != nil {
		// Unreadable (e.g. truncated by a failing card): start over; the
		// current identity is untouched.
		p.log.Warn("provisioning state unreadable; starting the recovery over", "err", err)
	}
	if err != nil || (st.Step != "" && !st.Recovery) {
		// Or left by a first provisioning killed between writing
		// identity.json and removing provision.json.
		if err := p.o.Store.Remove(store.ProvisionFile); err != nil {
			return store.Identity{}, false, fmt.Errorf("provision: %w", err)
		}
	}
	id, err = p.loop(ctx, p.recoverAttempt)
	if err != nil {
		return store.Identity{}, false, err
	}
	return id, id.CertificateID != cur.CertificateID || id.CertFile != cur.CertFile, nil
}

func (p *Provisioner) recoverAttempt(ctx context.Context) (store.Identity, error) {
	cur, _, err := p.o.Store.Identity()
	if err != nil {
		return store.Identity{}, fmt.Errorf("provision: %w", err)
	}
	st, err := p.loadState()
	if err != nil {
		return store.Identity{}, err
	}
	if st.Step != "" && !st.Recovery {
		st = State{}
	}
	if st.Step != "" && st.Serial != p.o.Serial {
		return store.Identity{}, fmt.Errorf("provision: %s was started for serial %q, this device reports %q", store.ProvisionFile, st.Serial, p.o.Serial)
	}
	switch {
	case st.Step == StepSwitched || (st.Step == StepRegistered && cur.CertFile == st.CertFile && cur.KeyFile == st.KeyFile):
		return p.retire(ctx, st, cur)
	case st.Step == StepRegistered:
		return p.verifyAndSwitch(ctx, st)
	}

	// Is the current certificate still refused? Only a refusal (not a
	// network failure) lets the recovery go on.
	err = p.probe(ctx, cur)
	if err == nil {
		p.log.Info("the current certificate connects again; recovery abandoned", "thingName", cur.ThingName, "certificateId", cur.CertificateID)
		return cur, p.abandon(st, cur)
	}
	if !mqttconn.IsRefused(err) && !errors.Is(err, errIdentityUnusable) {
		return store.Identity{}, fmt.Errorf("provision: current certificate not checked: %w", err)
	}
	p.log.Warn("the broker refuses the current certificate; provisioning a new identity by claim", "certificateId", cur.CertificateID, "err", err)

	if st.Step == "" || !p.keyUsable(st) {
		prev := cur
		next := State{Step: StepKey, Serial: p.o.Serial, KeyFile: p.recoveryKeyFile(cur), Recovery: true, Previous: &prev}
		if st, err = p.makeKey(ctx, next); err != nil {
			return store.Identity{}, err
		}
	}
	if st, err = p.checkToken(ctx, st); err != nil {
		return store.Identity{}, err
	}
	if st, err = p.claimSteps(ctx, st); err != nil {
		return store.Identity{}, err
	}
	return p.verifyAndSwitch(ctx, st)
}

// recoveryKeyFile names the new key: never a file of the current identity.
func (p *Provisioner) recoveryKeyFile(cur store.Identity) string {
	stamp := p.o.Now().UTC().Format("20060102T150405Z")
	for i := 0; ; i++ {
		name := "device-" + stamp
		if i > 0 {
			name = fmt.Sprintf("%s-%d", name, i)
		}
		kf := path.Join(store.CertsDir, name+".key")
		if kf == cur.KeyFile || certFileFor(kf) == cur.CertFile {
			continue
		}
		if _, err := os.Stat(p.o.Store.Path(kf)); errors.Is(err, fs.ErrNotExist) {
			return kf
		}
	}
}

// verifyAndSwitch connects with the newly registered certificate; once the
// broker accepts it, identity.json is switched to it and the previous
// identity retired.
func (p *Provisioner) verifyAndSwitch(ctx context.Context, st State) (store.Identity, error) {
	id := st.identity(p.o.Now())
	if err := p.probe(ctx, id); err != nil {
		if !mqttconn.IsRefused(err) {
			return store.Identity{}, fmt.Errorf("provision: new certificate not checked yet: %w", err)
		}
		st.VerifyRefusals++
		if st.VerifyRefusals >= verifyRefusalsBeforeNewCSR {
			p.log.Warn("the broker keeps refusing the new certificate; requesting another one for the same key", "certificateId", st.CertificateID)
			p.removeFiles(st.CertFile)
			st = st.backToKey()
		}
		if serr := p.saveState(ctx, st); serr != nil {
			return store.Identity{}, serr
		}
		return store.Identity{}, fmt.Errorf("provision: new certificate %s refused: %w", id.CertificateID, err)
	}
	if err := p.o.Store.SaveIdentity(id); err != nil {
		return store.Identity{}, fmt.Errorf("provision: %w", err)
	}
	p.log.Info("connected with the new certificate; identity switched", "thingName", id.ThingName, "certificateId", id.CertificateID)
	st.Step = StepSwitched
	if err := p.saveState(ctx, st); err != nil {
		return store.Identity{}, err
	}
	return p.retire(ctx, st, id)
}

// retire removes the previous identity's files and the recovery state.
func (p *Provisioner) retire(ctx context.Context, st State, cur store.Identity) (store.Identity, error) {
	if st.Previous != nil {
		for _, f := range []string{st.Previous.KeyFile, st.Previous.CertFile} {
			if f != cur.KeyFile && f != cur.CertFile {
				p.removeFiles(f)
			}
		}
	}
	if err := p.o.Store.Remove(store.ProvisionFile); err != nil {
		return store.Identity{}, fmt.Errorf("provision: %w", err)
	}
	p.log.Info("device recovered with a new identity", "thingName", cur.ThingName, "certificateId", cur.CertificateID)
	return cur, ctx.Err()
}

// abandon removes a recovery's new key and certificate (the current
// identity works again).
func (p *Provisioner) abandon(st State, cur store.Identity) error {
	if st.Recovery {
		for _, f := range []string{st.KeyFile, certFileFor(st.KeyFile)} {
			if f != "" && f != cur.KeyFile && f != cur.CertFile {
				p.removeFiles(f)
			}
		}
	}
	if err := p.o.Store.Remove(store.ProvisionFile); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	return nil
}

func (p *Provisioner) removeFiles(files ...string) {
	for _, f := range files {
		if f == "" {
			continue
		}
		if err := os.Remove(p.o.Store.Path(f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			p.log.Warn("remove file", "file", f, "err", err)
		}
	}
}

// errIdentityUnusable: the identity's key or certificate file cannot be
// loaded (a recovery replaces it like a refused one).
var errIdentityUnusable = errors.New("identity files unusable")

// probe makes one connection with id (client id = thing name, persistent
// session kept) and closes it.
func (p *Provisioner) probe(ctx context.Context, id store.Identity) error {
	cert, err := p.o.Store.TLSCertificate(id)
	if err != nil {
		return fmt.Errorf("%w: %v", errIdentityUnusable, err)
	}
	return mqttconn.Probe(ctx, mqttconn.Options{
		Address: p.o.Address, ClientID: id.ThingName, ConnectTimeout: p.o.ConnectTimeout,
		TLSConfig: func() (*tls.Config, error) {
			return mqttconn.NewTLSConfig(p.o.RootCAPEM, cert, p.o.ServerName, p.o.ALPN)
		},
		Logger: p.o.Logger,
	})
}
