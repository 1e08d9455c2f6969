package importer

import (
	"container/heap"
	"sync"
	"time"
)

// scheduler holds records waiting to be retried and hands them back to the
// workers (or, for keys another run held, to the claimer) once due. Adding
// never blocks, so a worker can never wait on the scheduler while the
// scheduler waits on the workers.
type scheduler struct {
	p      *pipeline
	mu     sync.Mutex
	q      itemHeap
	wake   chan struct{}
	queued int64 // records waiting, for progress
}

func newScheduler(p *pipeline) *scheduler {
	return &scheduler{p: p, wake: make(chan struct{}, 1)}
}

func (s *scheduler) add(it *item) {
	s.p.add()
	s.mu.Lock()
	heap.Push(&s.q, it)
	s.queued += int64(len(it.recs))
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *scheduler) waiting() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queued
}

func (s *scheduler) loop() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	interrupted := s.p.readCtx.Done()
	for {
		if s.p.readCtx.Err() != nil {
			s.drain()
		}
		// Gather what is due, merged into blocks of up to BlockSize.
		due, next := s.pop(time.Now())
		for _, it := range due {
			ch := s.p.send
			if it.reclaim {
				ch = s.p.reclaim
			}
			select {
			case ch <- it:
			case <-s.p.stop:
				return
			}
		}
		if len(due) > 0 {
			continue
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-s.p.stop:
			return
		case <-interrupted:
			interrupted = nil
		case <-s.wake:
		case <-timer.C:
		}
	}
}

// pop removes the items due at now, merged into blocks, and returns when the
// next one is due.
func (s *scheduler) pop(now time.Time) (due []*item, next time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var cur [2]*item // [send, reclaim]
	for s.q.Len() > 0 && !s.q[0].due.After(now) {
		it := heap.Pop(&s.q).(*item)
		s.queued -= int64(len(it.recs))
		k := 0
		if it.reclaim {
			k = 1
		}
		if c := cur[k]; c != nil && len(c.recs)+len(it.recs) <= s.p.cfg.BlockSize {
			c.recs = append(c.recs, it.recs...)
			s.p.done() // merged into c
			continue
		}
		cur[k] = it
		due = append(due, it)
	}
	if s.q.Len() > 0 {
		next = s.q[0].due
	}
	return due, next
}

// drain leaves every waiting record to the next run: the run was
// interrupted and does not wait for retries.
func (s *scheduler) drain() {
	s.mu.Lock()
	items := s.q
	s.q = nil
	s.queued = 0
	s.mu.Unlock()
	for _, it := range items {
		if it.reclaim {
			s.p.abandon(it.recs)
		} else {
			s.p.leave(it.recs)
		}
		s.p.done()
	}
}

type itemHeap []*item

func (h itemHeap) Len() int           { return len(h) }
func (h itemHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h itemHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(x any)        { *h = append(*h, x.(*item)) }
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}
