//go:build linux

package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// canSupervise: Linux has the parent-death signal and /proc/self/exe.
const canSupervise = true

// The supervisor gets SIGTERM, which it catches, when the thread that
// started it (its owner's) dies; the op gets SIGKILL when its supervisor
// dies, should anyone kill the supervisor alone.
func supervisorAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
func directAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
func opAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }

// Machine identifies the running system as this process sees it: the boot
// id (new at every boot) and the pid namespace (one per container). Two
// processes with the same Machine see the same processes under the same
// pids. "" means unknown, which matches nothing.
func Machine() string {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(boot)) + "/" + ns
}

// ErrOtherMachine means a group runs on another machine (or one this
// process cannot identify): its processes cannot be seen from here.
var ErrOtherMachine = errors.New("the op's process group is on another machine")

// procStat is what /proc/PID/stat says of a process.
type procStat struct {
	state byte
	pgid  int
	start uint64 // clock ticks since boot
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// The command name, in parentheses, may hold spaces and parentheses:
	// the fields start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	pgid, err := strconv.Atoi(f[2])
	if err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: pgrp: %w", pid, err)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: starttime: %w", pid, err)
	}
	return procStat{state: f[0][0], pgid: pgid, start: start}, nil
}

func startTime(pid int) (uint64, error) {
	st, err := readStat(pid)
	return st.start, err
}

// Members returns the pids of g's processes still running on this machine
// (zombies run nothing and are left out), or ErrOtherMachine.
//
// A pid number is not reused while any process still has it as its group
// id, so a leader pid found running with another start time than g.Start
// means the whole group died before: no member is returned then.
func Members(g Group) ([]int, error) {
	if g.Machine == "" || g.Machine != Machine() {
		return nil, ErrOtherMachine
	}
	if g.PGID <= 1 {
		return nil, fmt.Errorf("process group %d: not an op's group", g.PGID)
	}
	if lead, err := readStat(g.PGID); err == nil && g.Start != 0 && lead.start != g.Start {
		return nil, nil
	}
	dir, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, e := range dir {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil || st.pgid != g.PGID || st.state == 'Z' || st.state == 'X' {
			continue // gone meanwhile, or not of the group
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// Reap kills what is left of group g with SIGKILL and waits until none of
// it runs, or ctx ends. It returns ErrOtherMachine for a group it cannot
// see, and nil at once for a group already gone.
func Reap(ctx context.Context, g Group) error {
	for {
		pids, err := Members(g)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if err := syscall.Kill(-g.PGID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill process group %d (%d left): %w", g.PGID, len(pids), err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("process group %d: %d processes left (%v): %w", g.PGID, len(pids), pids, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
