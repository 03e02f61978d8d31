// SPDX-License-Identifier: GPL-2.0
/*
 * The few kernel facilities rvmx needs that are macros or static inlines,
 * and so have no symbol Rust could call. Logic stays in Rust.
 */
#include <linux/hrtimer.h>
#include <linux/io.h>
#include <linux/mm.h>
#include <linux/sched.h>
#include <linux/smp.h>
#include <linux/timekeeping.h>

/* Called from Rust only; the prototypes keep -Wmissing-prototypes quiet. */
phys_addr_t rvmx_page_to_phys(struct page *page);
phys_addr_t rvmx_virt_to_phys(const void *addr);
void rvmx_on_each_cpu(smp_call_func_t func, void *info);
void *rvmx_page_address(struct page *page);
void rvmx_local_irq_disable(void);
void rvmx_local_irq_enable(void);
void rvmx_cond_resched(void);
void rvmx_prepare_to_sleep(void);
void rvmx_cancel_sleep(void);
void rvmx_sleep_until(u64 deadline_ns);
u64 rvmx_ktime_ns(void);

phys_addr_t rvmx_page_to_phys(struct page *page)
{
	return page_to_phys(page);
}

phys_addr_t rvmx_virt_to_phys(const void *addr)
{
	return virt_to_phys((void *)addr);
}

/* Runs func(info) on every online CPU with interrupts off and waits. */
void rvmx_on_each_cpu(smp_call_func_t func, void *info)
{
	on_each_cpu(func, info, 1);
}

/* A lowmem page's kernel address (the vCPU run area). */
void *rvmx_page_address(struct page *page)
{
	return page_address(page);
}

void rvmx_local_irq_disable(void)
{
	local_irq_disable();
}

void rvmx_local_irq_enable(void)
{
	local_irq_enable();
}

void rvmx_cond_resched(void)
{
	cond_resched();
}

/*
 * The halt sleep (vcpu/halt.rs): mark the task sleeping, check for work,
 * then sleep until a wake-up, a signal or the deadline (CLOCK_MONOTONIC
 * ns; 0 = none). The order makes a wake-up between the check and the
 * sleep end the sleep at once.
 */
void rvmx_prepare_to_sleep(void)
{
	set_current_state(TASK_INTERRUPTIBLE);
}

void rvmx_cancel_sleep(void)
{
	__set_current_state(TASK_RUNNING);
}

void rvmx_sleep_until(u64 deadline_ns)
{
	ktime_t expires = ns_to_ktime(deadline_ns);

	if (deadline_ns)
		schedule_hrtimeout(&expires, HRTIMER_MODE_ABS);
	else
		schedule();
	__set_current_state(TASK_RUNNING);
}

u64 rvmx_ktime_ns(void)
{
	return ktime_get_ns();
}
