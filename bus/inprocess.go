package bus

import (
	"context"
	"fmt"
	"net"
	"sync"
)

// inProcessListener is the embedded broker's listener. It accepts TCP
// connections on the broker's port, for clients of other processes, and
// in-memory connections (net.Pipe) dialled by the clients of this process
// through dial. An in-memory connection skips the loopback network stack: a
// message is copied once, from the writer's buffer into the reader's,
// instead of through two system calls and the kernel's socket buffers. The
// all-in-one's producer and consumer move every span through the broker
// twice: in its end-to-end profile (1.5M spans) the socket reads and
// writes of those connections took about 0.5 CPU-s, 2% of the whole, and
// the pipes' copies take 0.15.
type inProcessListener struct {
	tcp   net.Listener
	conns chan accepted
	done  chan struct{}
	once  sync.Once
}

// accepted is a connection (or the TCP listener's error) for Accept.
type accepted struct {
	conn net.Conn
	err  error
}

func newInProcessListener(tcp net.Listener) *inProcessListener {
	l := &inProcessListener{tcp: tcp, conns: make(chan accepted), done: make(chan struct{})}
	go l.acceptTCP()
	return l
}

// acceptTCP hands TCP connections to Accept until the listener fails or
// is closed. After a TCP error Accept returns it, and the broker stops
// listening, as it would on its own TCP listener.
func (l *inProcessListener) acceptTCP() {
	for {
		c, err := l.tcp.Accept()
		select {
		case l.conns <- accepted{c, err}:
		case <-l.done:
			if c != nil {
				_ = c.Close()
			}
			return
		}
		if err != nil {
			return
		}
	}
}

// Accept returns the next connection, from TCP or from dial.
func (l *inProcessListener) Accept() (net.Conn, error) {
	select {
	case a := <-l.conns:
		return a.conn, a.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops both kinds of connection; connections already accepted stay
// open until the broker closes them.
func (l *inProcessListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.tcp.Close()
	})
	return err
}

// Addr is the TCP address, which the broker advertises.
func (l *inProcessListener) Addr() net.Addr { return l.tcp.Addr() }

// dial connects to the broker in memory, whatever address it is given: the
// embedded broker is the only broker, so every address the clients learn
// from it is its own. It has kgo.Dialer's signature.
func (l *inProcessListener) dial(ctx context.Context, _, _ string) (_ net.Conn, err error) {
	server, client := net.Pipe()
	select {
	case l.conns <- accepted{conn: server}:
		return client, nil
	case <-l.done:
		err = net.ErrClosed
	case <-ctx.Done():
		err = ctx.Err()
	}
	_ = server.Close()
	_ = client.Close()
	return nil, fmt.Errorf("dial embedded kafka: %w", err)
}
