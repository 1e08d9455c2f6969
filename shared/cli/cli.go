// Package cli is the command-line convention of csvreader, crmintegrator
// and fakecrm: flags backed by environment variables with one help format,
// secrets that -h never shows, every bad value reported at once, and the
// exit codes 0 (done), 1 (the work failed) and 2 (bad usage: nothing was
// done).
package cli

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Exit codes every program uses; a program may add its own above 2.
const (
	ExitOK    = 0
	ExitFatal = 1 // the work failed
	ExitUsage = 2 // a bad flag, argument or environment variable: nothing was done
)

// Error carries the exit code of an error. An Error without Err prints
// nothing: the program has already said why.
type Error struct {
	Code int
	Err  error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return ""
	}
	return e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }
func (e *Error) ExitCode() int { return e.Code }

// Usage marks err as a usage error (exit code 2).
func Usage(err error) error { return &Error{ExitUsage, err} }

// Usagef is Usage of a formatted message.
func Usagef(format string, a ...any) error { return Usage(fmt.Errorf(format, a...)) }

// ExitCode is the exit code for err: 0 for nil, the code of an error that
// has one (an ExitCode method, anywhere in its chain), else 1.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return ExitFatal
}

// RunFunc is a program's body: main hands it the process's arguments (without
// the program name), environment and streams; tests call it directly.
type RunFunc func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error

// Main runs run under a context that SIGINT and SIGTERM cancel, prints
// "name: error" when it fails, and exits with the error's code.
func Main(name string, run RunFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if msg := err.Error(); msg != "" {
			fmt.Fprintf(os.Stderr, "%s: %s\n", name, msg)
		}
	}
	os.Exit(ExitCode(err))
}

// ReadSecret reads a secret (a token, a password) from a file, without its
// surrounding white space. An empty file is an error: an empty token would
// mean no authentication at all. Errors name the file, never its content.
func ReadSecret(path, what string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s file: %w", what, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s file %s is empty", what, path)
	}
	return s, nil
}

// CertPool reads a PEM file of CA certificates.
func CertPool(path, what string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s %s: no PEM certificate found", what, path)
	}
	return pool, nil
}
