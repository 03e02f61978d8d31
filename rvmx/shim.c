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
#include <asm/desc.h>

/* Called from Rust only; the prototypes keep -Wmissing-prototypes quiet. */
phys_addr_t rvmx_page_to_phys(struct page *page);
phys_addr_t rvmx_virt_to_phys(const void *addr);
void rvmx_on_each_cpu(smp_call_func_t func, void *info);
void rvmx_on_cpus_where(smp_cond_func_t cond, smp_call_func_t func, void *info);
void *rvmx_page_address(struct page *page);
void rvmx_local_irq_disable(void);
void rvmx_local_irq_enable(void);
void rvmx_cond_resched(void);
void rvmx_prepare_to_sleep(void);
void rvmx_cancel_sleep(void);
void rvmx_sleep_until(u64 deadline_ns);
u64 rvmx_ktime_ns(void);
bool rvmx_need_resched(void);
void rvmx_invalidate_tss_limit(void);

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

/* Runs func(info) on the online CPUs where cond(cpu, info), and waits. */
void rvmx_on_cpus_where(smp_cond_func_t cond, smp_call_func_t func, void *info)
{
	on_each_cpu_cond(cond, func, info, true);
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

/* Whether the scheduler wants this CPU for another task (halt polling). */
bool rvmx_need_resched(void)
{
	return need_resched();
}

/*
 * A VM exit sets TR's limit to 0x67, cutting off the TSS's I/O bitmap. As
 * KVM does (invalidate_tss_limit()): a task without ioperm() needs no
 * bitmap, and the kernel reloads TR when it switches to one that has it;
 * for this task, reload it now. native_load_tr_desc() would do that with
 * load_direct_gdt(), which is exported for KVM only: LTR marks the TSS
 * descriptor busy, so it runs on the writable GDT, swapped in around it.
 * Interrupts are off.
 */
void rvmx_invalidate_tss_limit(void)
{
	struct desc_struct *gdt = get_current_gdt_rw();
	struct desc_ptr rw = { .address = (unsigned long)gdt, .size = GDT_SIZE - 1 };
	struct desc_ptr cur;
	tss_desc tss;

	if (!test_thread_flag(TIF_IO_BITMAP)) {
		this_cpu_write(__tss_limit_invalid, true);
		return;
	}
	memcpy(&tss, &gdt[GDT_ENTRY_TSS], sizeof(tss));
	tss.type = DESC_TSS;
	write_gdt_entry(gdt, GDT_ENTRY_TSS, &tss, DESC_TSS);
	native_store_gdt(&cur);
	native_load_gdt(&rw);
	asm volatile("ltr %w0" : : "q" (GDT_ENTRY_TSS * 8));
	native_load_gdt(&cur);
	this_cpu_write(__tss_limit_invalid, false);
}
