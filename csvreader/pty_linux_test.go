package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/integrator"
)

// openPTY opens a pseudo-terminal pair with the standard library alone:
// /dev/ptmx, unlocked, and its /dev/pts/N.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	var unlock int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, m.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		t.Fatalf("unlock pty: %v", e)
	}
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, m.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		t.Fatalf("pty number: %v", e)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty slave: %v", err)
	}
	return m, s
}

// On a terminal the progress is one status line rewritten in place, and
// the summary follows it on a line of its own.
func TestProgressOnTerminal(t *testing.T) {
	s := newStack(t, fakecrm.Config{Faults: fakecrm.Faults{Latency: 20 * time.Millisecond}}, integrator.Config{})
	file := exportFile(t, 3000)
	master, slave := openPTY(t)
	defer master.Close()
	cmd := child("-integrator", s.addr, "-db", s.dsn, "-rejects", filepath.Join(t.TempDir(), "r.csv"),
		"-workers", "2", "-block-size", "100", "-progress-interval", "100ms", file)
	cmd.Stderr = slave
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var out bytes.Buffer
	var wg sync.WaitGroup
	wg.Go(func() { io.Copy(&out, master) }) // ends with EIO once the child is gone
	err := cmd.Wait()
	master.SetReadDeadline(time.Now().Add(2 * time.Second))
	wg.Wait()
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	text := out.String()
	updates := strings.Count(text, clearLine+"progress: ")
	if updates < 2 {
		t.Fatalf("%d status updates on the terminal, want several rewritten in place:\n%q", updates, text)
	}
	if n := strings.Count(text, "progress: "); n != updates {
		t.Errorf("%d of %d progress lines were not rewritten in place:\n%q", n-updates, n, text)
	}
	if !strings.Contains(text, clearLine+"finished: 3000 rows") {
		t.Errorf("no final status line:\n%q", text)
	}
	if !strings.Contains(stdout.String(), "created            3000") {
		t.Errorf("summary:\n%s", stdout.String())
	}
}
