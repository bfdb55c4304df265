// Package sizeclass maps sizes to the size classes of pooled buffers: fixed
// steps up to a bound, so that a buffer wastes less than one step where
// most requests fall, then powers of two up to a maximum. Pooled memory is
// live heap, which the garbage collector's goal doubles, so a pool whose
// buffers are a power of two apart keeps up to twice what its users need.
package sizeclass

import (
	"fmt"
	"math/bits"
)

// Classes are the sizes step, 2·step, …, linear·step, then doubling up to
// a maximum.
type Classes struct{ step, linear, count int }

// New returns the classes of step·1 … step·linear, then powers of two up to
// max, which must be step·linear times a power of two.
func New(step, linear, max int) Classes {
	top := step * linear
	if step < 1 || linear < 1 || max < top || max%top != 0 || bits.OnesCount(uint(max/top)) != 1 {
		panic(fmt.Sprintf("sizeclass: max %d is not %d·%d times a power of two", max, step, linear))
	}
	return Classes{step: step, linear: linear, count: linear + bits.Len(uint(max/top)) - 1}
}

// Count is the number of classes.
func (c Classes) Count() int { return c.count }

// Max is the size of the largest class.
func (c Classes) Max() int { return c.Size(c.count - 1) }

// Of returns the smallest class of at least n bytes (or elements), or -1
// past the largest.
func (c Classes) Of(n int) int {
	top := c.step * c.linear
	if n <= top {
		return max(n-1, 0) / c.step
	}
	if k := c.linear - 1 + bits.Len(uint((n-1)/top)); k < c.count {
		return k
	}
	return -1
}

// Floor returns the largest class of at most n, or -1 below the smallest:
// where a buffer of capacity n can go back to serve its class.
func (c Classes) Floor(n int) int {
	top := c.step * c.linear
	switch {
	case n < c.step:
		return -1
	case n <= top:
		return n/c.step - 1
	}
	return min(c.linear-1+bits.Len(uint(n/top))-1, c.count-1)
}

// Size returns the size of class k.
func (c Classes) Size(k int) int {
	if k < c.linear {
		return (k + 1) * c.step
	}
	return c.step * c.linear << (k - c.linear + 1)
}
