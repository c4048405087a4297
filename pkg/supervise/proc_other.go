//go:build !linux

package supervise

import (
	"context"
	"errors"
	"syscall"
)

// canSupervise: no parent-death signal, no /proc/self/exe.
const canSupervise = false

// Without the parent-death signal and /proc, ops lead their own group and
// nothing kills it when the owner dies.
func supervisorAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
func directAttr() *syscall.SysProcAttr     { return &syscall.SysProcAttr{Setpgid: true} }
func opAttr() *syscall.SysProcAttr         { return nil }

// Machine is unknown off Linux: it matches nothing.
func Machine() string { return "" }

// ErrOtherMachine means a group runs on another machine (or one this
// process cannot identify): its processes cannot be seen from here.
var ErrOtherMachine = errors.New("the op's process group is on another machine")

func startTime(int) (uint64, error) { return 0, errors.ErrUnsupported }

// Members is ErrOtherMachine off Linux.
func Members(Group) ([]int, error) { return nil, ErrOtherMachine }

// Reap is ErrOtherMachine off Linux.
func Reap(context.Context, Group) error { return ErrOtherMachine }
